"""Data formats, the dataset_info.json registry, files, mixing, splitting and bad-row reporting."""

import json
import logging

import pytest

from conftest import ALPACA_ROWS, write_json
from tuneforge import config
from tuneforge.data import DataError, load_conversations


def data_cfg(**kw):
    return config.load(None, {"output_dir": "o", **kw}).data


def messages(ds):
    return [r["messages"] for r in ds]


def test_alpaca_with_system_history_and_input(data_dir):
    ds, stats = load_conversations(data_cfg(dataset="my_alpaca", dataset_dir=data_dir))
    rows = messages(ds)
    assert rows[1] == [{"role": "user", "content": "Add the numbers.\n2 and 3"}, {"role": "assistant", "content": "5"}]
    assert rows[2] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                       {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "Name a colour."},
                       {"role": "assistant", "content": "Red."}]
    assert stats["my_alpaca"] == {"rows": 16, "skipped": 0, "first_skipped": None}


def test_sharegpt_default_tags(data_dir):
    ds, _ = load_conversations(data_cfg(dataset="my_chat", dataset_dir=data_dir))
    assert messages(ds)[0] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def test_sharegpt_role_content_variant_and_system_turn(tmp_path):
    rows = [{"conversations": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    write_json(str(tmp_path / "c.json"), rows)
    write_json(str(tmp_path / "dataset_info.json"), {"c": {"file_name": "c.json", "formatting": "sharegpt"}})
    ds, _ = load_conversations(data_cfg(dataset="c", dataset_dir=str(tmp_path)))
    assert messages(ds)[0] == [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_sharegpt_custom_tags_and_columns(tmp_path):
    rows = [{"dialog": [{"speaker": "client", "text": "q1"}, {"speaker": "bot", "text": "a1"},
                        {"speaker": "client", "text": "q2"}, {"speaker": "bot", "text": "a2"}], "sys": "be nice"}]
    write_json(str(tmp_path / "c.json"), rows)
    write_json(str(tmp_path / "dataset_info.json"), {"c": {
        "file_name": "c.json", "formatting": "sharegpt", "columns": {"messages": "dialog", "system": "sys"},
        "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "client", "assistant_tag": "bot"}}})
    ds, _ = load_conversations(data_cfg(dataset="c", dataset_dir=str(tmp_path)))
    assert [m["role"] for m in messages(ds)[0]] == ["system", "user", "assistant", "user", "assistant"]
    assert messages(ds)[0][0]["content"] == "be nice"


def test_openai_messages_file_is_detected_without_registry(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows * 3))
    ds, _ = load_conversations(data_cfg(dataset=str(path), dataset_dir=str(tmp_path / "nowhere")))
    assert len(ds) == 3 and messages(ds)[0][1] == {"role": "assistant", "content": "a"}


@pytest.mark.parametrize("ext", ["csv", "parquet", "jsonl"])
def test_csv_parquet_and_jsonl_files(tmp_path, ext):
    from datasets import Dataset

    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(5)]
    path = str(tmp_path / f"d.{ext}")
    getattr(Dataset.from_list(rows), {"csv": "to_csv", "parquet": "to_parquet", "jsonl": "to_json"}[ext])(path)
    ds, _ = load_conversations(data_cfg(dataset=path))
    assert len(ds) == 5 and messages(ds)[4][1]["content"] == "a4"


def test_folder_of_files_is_one_dataset(tmp_path):
    for i in range(3):
        write_json(str(tmp_path / "d" / f"part{i}.json"), [{"instruction": f"q{i}", "output": f"a{i}"}])
    write_json(str(tmp_path / "dataset_info.json"), {"parts": {"file_name": "d"}})
    ds, _ = load_conversations(data_cfg(dataset="parts", dataset_dir=str(tmp_path)))
    assert sorted(m[1]["content"] for m in messages(ds)) == ["a0", "a1", "a2"]


BAD_ROWS = [
    {"instruction": "ok", "output": "fine"},
    {"instruction": "no answer", "output": ""},
    {"instruction": "", "input": "", "output": "no question"},
    {"instruction": "ok2", "output": "fine2"},
]


def test_bad_rows_are_counted_and_the_first_reported(tmp_path, caplog):
    write_json(str(tmp_path / "b.json"), BAD_ROWS)
    with caplog.at_level(logging.WARNING):
        ds, stats = load_conversations(data_cfg(dataset=str(tmp_path / "b.json")))
    assert len(ds) == 2
    assert stats[str(tmp_path / "b.json")]["skipped"] == 2
    text = caplog.text
    assert "skipped 2 of 4 rows" in text and "row 1: `output` is empty" in text


def test_strict_fails_on_the_first_bad_row(tmp_path):
    write_json(str(tmp_path / "b.json"), BAD_ROWS)
    with pytest.raises(DataError, match="row 1: `output` is empty .*strict"):
        load_conversations(data_cfg(dataset=str(tmp_path / "b.json"), strict=True))


@pytest.mark.parametrize("convo, reason", [
    ([], "empty or not a list"),
    ([{"from": "human", "value": "q"}], "does not end with an assistant turn"),
    ([{"from": "gpt", "value": "a"}], "where a user or tool turn was expected"),
    ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}], "message 1 has an empty `value`"),
    ([{"from": "robot", "value": "q"}], "`from` = 'robot'"),
])
def test_malformed_sharegpt_rows_name_the_message(tmp_path, convo, reason):
    write_json(str(tmp_path / "c.json"), [{"conversations": convo}])
    with pytest.raises(DataError, match=reason):
        load_conversations(data_cfg(dataset=str(tmp_path / "c.json"), strict=True))


def test_column_mapping_to_a_missing_column_is_named(tmp_path):
    write_json(str(tmp_path / "a.json"), [{"question": "q", "answer": "a"}])
    write_json(str(tmp_path / "dataset_info.json"), {"a": {"file_name": "a.json", "columns": {"prompt": "question", "response": "reply"}}})
    with pytest.raises(DataError, match="has no column `reply` .*Fix `columns`"):
        load_conversations(data_cfg(dataset="a", dataset_dir=str(tmp_path)))


def test_ranking_dataset_is_refused_for_sft(tmp_path):
    write_json(str(tmp_path / "p.json"), [{"instruction": "q", "chosen": "a", "rejected": "b"}])
    write_json(str(tmp_path / "dataset_info.json"), {"p": {"file_name": "p.json", "ranking": True,
                                                           "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}}})
    with pytest.raises(DataError, match="ranking .*not sft"):
        load_conversations(data_cfg(dataset="p", dataset_dir=str(tmp_path)))


def test_unknown_registry_key_and_format_are_named(tmp_path):
    write_json(str(tmp_path / "a.json"), ALPACA_ROWS)
    write_json(str(tmp_path / "dataset_info.json"), {"a": {"file_name": "a.json", "colums": {}}, "b": {"file_name": "a.json", "formatting": "sharegtp"}})
    with pytest.raises(DataError, match="unknown key `colums`; did you mean `columns`"):
        load_conversations(data_cfg(dataset="a", dataset_dir=str(tmp_path)))
    with pytest.raises(DataError, match="formatting `sharegtp` is not supported; did you mean `sharegpt`"):
        load_conversations(data_cfg(dataset="b", dataset_dir=str(tmp_path)))


def test_unreadable_file_is_named(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DataError, match="x.json` line 1 column 2: Expecting property name"):
        load_conversations(data_cfg(dataset=str(tmp_path / "x.json")))


def test_max_samples_applies_per_dataset_and_concat_keeps_order(data_dir):
    ds, _ = load_conversations(data_cfg(dataset="my_alpaca,my_chat", dataset_dir=data_dir, max_samples=3))
    assert len(ds) == 6
    assert messages(ds)[3][0]["content"] == "hi"


def test_interleave_with_probabilities_is_seeded(data_dir):
    def order(seed):
        ds, _ = load_conversations(data_cfg(dataset="my_alpaca,my_chat", dataset_dir=data_dir, mix_strategy="interleave_under",
                                            interleave_probs=[0.5, 0.5], seed=seed))
        return [m[-1]["content"] for m in messages(ds)]

    a, b = order(1), order(1)
    assert a == b and "hello" in a and any(x != "hello" for x in a)
    assert order(1) != order(7)


def test_val_size_split_is_seeded_and_disjoint(data_dir):
    from tuneforge.data import split

    ds, _ = load_conversations(data_cfg(dataset="my_alpaca", dataset_dir=data_dir))
    first, again = split(ds, 0.25, 42), split(ds, 0.25, 42)
    assert len(first["eval"]) == 4 and len(first["train"]) == 12
    assert messages(first["eval"]) == messages(again["eval"])
    assert split(ds, 3, 42)["eval"].num_rows == 3
    with pytest.raises(DataError, match="leaves no training rows"):
        split(ds, 16, 42)


def test_one_wrongly_typed_row_never_rewrites_the_others_text(tmp_path, tiny_tokenizer):
    """A list in one row's `output` made the datasets JSON loader decode every other row's text ("true" -> True,
    "1e5" -> 100000.0); rows are read as written, and the wrongly typed rows are reported, not coerced."""
    from tuneforge.data import encode

    rows = [{"instruction": "Is it?", "input": "", "output": text} for text in ("true", "null", "1e5", "[1,2]", "6")]
    rows += [{"instruction": "List", "input": "", "output": ["a"]}, {"instruction": 5, "input": "", "output": "five"},
             {"instruction": "Number", "input": "", "output": 6}]
    write_json(str(tmp_path / "mixed.json"), rows)
    ds, stats = load_conversations(data_cfg(dataset=str(tmp_path / "mixed.json")))
    answers = [m[-1]["content"] for m in messages(ds)]
    assert answers == ["true", "null", "1e5", "[1,2]", "6"]
    (only,) = stats.values()
    assert only["skipped"] == 3 and only["first_skipped"] == 'row 5: `output` must be text, not list (["a"])'
    for row in messages(ds):  # the ids are exactly the chat template of the raw strings
        ids, _ = encode(tiny_tokenizer, row, 256, False, False)
        assert ids == tiny_tokenizer.apply_chat_template(row, tokenize=True, return_dict=False)


def test_jsonl_and_csv_keep_text_as_written(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"instruction": "q", "output": "007"}\n{"instruction": "q", "output": "1e5"}\n')
    (tmp_path / "b.csv").write_text('instruction,output\nq,007\nq,true\n')
    for name, want in (("a.jsonl", ["007", "1e5"]), ("b.csv", ["007", "true"])):
        ds, _ = load_conversations(data_cfg(dataset=str(tmp_path / name)))
        assert [m[-1]["content"] for m in messages(ds)] == want


@pytest.mark.parametrize("name, body, words", [
    ("broken.json", '[{"instruction": "q", "output": "a"},\n {"instruction": "q" "output": "b"}]', "line 2 column 22"),
    ("broken.jsonl", '{"instruction": "q", "output": "a"}\n{"instruction": "q", "output": }\n', "line 2 column 32"),
    ("latin1.json", None, "is not UTF-8 text (byte"),
    ("object.json", '{\n "instruction": "q", "output": "a"\n}', "holds one JSON object"),
])
def test_broken_files_are_named_with_line_and_column(tmp_path, name, body, words):
    path = tmp_path / name
    if body is None:
        path.write_bytes('[{"instruction": "caf\xe9", "output": "a"}]'.encode("latin-1"))
    else:
        path.write_text(body)
    with pytest.raises(DataError, match=words.replace("(", r"\(")):
        load_conversations(data_cfg(dataset=str(path)))
