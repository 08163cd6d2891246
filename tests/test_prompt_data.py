"""Prompt-only data (stages grpo and ppo): alpaca, sharegpt and OpenAI-messages rows become chat prompts that encode
exactly as `apply_chat_template(..., add_generation_prompt=True)`, with the reference answer and the other columns."""

import json

import pytest

from conftest import write_json
from tuneforge import config
from tuneforge.data import DataError
from tuneforge.data.prompts import build_prompts, load_prompts

ALPACA = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "level": 1},
          {"instruction": "Name a colour.", "system": "Be brief.", "history": [["hello", "hello there"]], "level": 2}]
SHAREGPT = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                               {"from": "human", "value": "and now?"}], "id": "open"},
            {"conversations": [{"from": "system", "value": "Answer in one word."}, {"from": "human", "value": "Sky colour?"},
                               {"from": "gpt", "value": "Blue"}], "id": "answered"}]
OPENAI = [{"messages": [{"role": "user", "content": "What is 6 x 7?"}], "answer": "42"}]


@pytest.fixture
def prompt_dir(tmp_path):
    d = tmp_path / "data"
    write_json(str(d / "alpaca.json"), ALPACA)
    write_json(str(d / "chat.json"), SHAREGPT)
    (d / "msgs.jsonl").write_text("\n".join(json.dumps(r) for r in OPENAI))
    write_json(str(d / "dataset_info.json"), {
        "alp": {"file_name": "alpaca.json", "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                                         "system": "system", "history": "history"}},
        "chat": {"file_name": "chat.json", "formatting": "sharegpt"},
        "msgs": {"file_name": "msgs.jsonl", "formatting": "openai"},
        "pairs": {"file_name": "alpaca.json", "ranking": True},
    })
    return str(d)


def data_cfg(**kw):
    return config.load(None, {"output_dir": "o", **kw}).data


def rows(ds):
    return [dict(r) for r in ds]


def test_alpaca_rows_become_prompts_with_the_output_as_answer(prompt_dir):
    ds, stats = load_prompts(data_cfg(dataset="alp", dataset_dir=prompt_dir))
    first, second = rows(ds)
    assert first["prompt"] == [{"role": "user", "content": "Add the numbers.\n2 and 3"}]
    assert first["answer"] == "5" and first["level"] == 1
    assert second["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                                {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "Name a colour."}]
    assert second["answer"] is None  # a prompt-only row
    assert stats["alp"] == {"rows": 2, "skipped": 0, "first_skipped": None}


def test_sharegpt_prompts_end_with_the_user_turn_and_a_final_answer_moves_to_answer(prompt_dir):
    open_row, answered = rows(load_prompts(data_cfg(dataset="chat", dataset_dir=prompt_dir))[0])
    assert open_row["prompt"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                  {"role": "user", "content": "and now?"}]
    assert open_row["answer"] is None and open_row["id"] == "open"
    assert answered["prompt"] == [{"role": "system", "content": "Answer in one word."},
                                  {"role": "user", "content": "Sky colour?"}]
    assert answered["answer"] == "Blue"


def test_openai_messages_keep_their_own_answer_column(prompt_dir):
    (row,) = rows(load_prompts(data_cfg(dataset="msgs", dataset_dir=prompt_dir))[0])
    assert row["prompt"] == [{"role": "user", "content": "What is 6 x 7?"}] and row["answer"] == "42"


@pytest.mark.parametrize("name", ["alp", "chat", "msgs"])
def test_prompt_ids_equal_apply_chat_template_with_the_generation_prompt(prompt_dir, tiny_tokenizer, tmp_path, name):
    parts, stats = build_prompts(data_cfg(dataset=name, dataset_dir=prompt_dir), tiny_tokenizer, str(tmp_path / "cache"))
    for row in parts["train"]:
        want = tiny_tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)["input_ids"]
        assert row["prompt_ids"] == list(want)
        assert tiny_tokenizer.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert stats["train_longest"] == sorted((len(r["prompt_ids"]) for r in parts["train"]), reverse=True)
    assert stats["train_examples"] == len(parts["train"]) and stats["train_overlong"] == 0


def test_datasets_mix_with_the_union_of_their_columns(prompt_dir, tiny_tokenizer, tmp_path):
    parts, stats = build_prompts(data_cfg(dataset="alp,chat,msgs", dataset_dir=prompt_dir), tiny_tokenizer, str(tmp_path / "c"))
    train = parts["train"]
    assert len(train) == 5 and {"prompt", "answer", "prompt_ids", "level", "id"} <= set(train.column_names)
    assert [r["answer"] for r in train] == ["5", None, None, "Blue", "42"]
    assert set(stats["datasets"]) == {"alp", "chat", "msgs"}


def test_long_prompts_keep_their_end_or_are_dropped(prompt_dir, tiny_tokenizer, tmp_path):
    cfg = data_cfg(dataset="alp", dataset_dir=prompt_dir, cutoff_len=12)
    parts, stats = build_prompts(cfg, tiny_tokenizer, str(tmp_path / "c"))
    full = tiny_tokenizer.apply_chat_template(parts["train"][0]["prompt"], add_generation_prompt=True)["input_ids"]
    assert len(full) > 12 and parts["train"][0]["prompt_ids"] == list(full)[-12:]
    assert stats["train_overlong"] == 2 and stats["train_longest"] == [12, 12]
    kept, stats = build_prompts(data_cfg(dataset="alp", dataset_dir=prompt_dir, cutoff_len=30), tiny_tokenizer,
                                str(tmp_path / "c"), keep_overlong=False)
    assert [r["answer"] for r in kept["train"]] == ["5"] and stats["train_overlong"] == 1
    with pytest.raises(DataError, match="raise cutoff_len") as e:
        build_prompts(cfg, tiny_tokenizer, str(tmp_path / "c"), keep_overlong=False)
    assert e.value.key == "cutoff_len"


def test_val_size_holds_out_prompts_and_a_second_build_comes_from_the_cache(prompt_dir, tiny_tokenizer, tmp_path, caplog):
    cfg = data_cfg(dataset="alp,chat,msgs", dataset_dir=prompt_dir, val_size=2)
    parts, stats = build_prompts(cfg, tiny_tokenizer, str(tmp_path / "c"))
    assert (len(parts["train"]), len(parts["eval"])) == (3, 2) and stats["eval_examples"] == 2
    caplog.set_level("INFO", logger="tuneforge.data.cache")
    again, stats2 = build_prompts(cfg, tiny_tokenizer, str(tmp_path / "c"))
    assert "from cache" in caplog.text
    assert rows(again["eval"]) == rows(parts["eval"]) and stats2 == json.loads(json.dumps(stats))


def test_bad_rows_are_skipped_and_counted_or_fatal_with_strict(tmp_path):
    write_json(str(tmp_path / "p.json"), [{"instruction": "ok"}, {"instruction": ""}, {"instruction": 3}])
    write_json(str(tmp_path / "dataset_info.json"), {"p": {"file_name": "p.json"}})
    ds, stats = load_prompts(data_cfg(dataset="p", dataset_dir=str(tmp_path)))
    assert len(ds) == 1 and stats["p"]["skipped"] == 2 and "row 1" in stats["p"]["first_skipped"]
    with pytest.raises(DataError, match="row 1.*strict"):
        load_prompts(data_cfg(dataset="p", dataset_dir=str(tmp_path), strict=True))


def test_sharegpt_turns_out_of_order_are_bad_rows(tmp_path):
    convo = [{"from": "gpt", "value": "I speak first"}, {"from": "human", "value": "q"}]
    write_json(str(tmp_path / "c.json"), [{"conversations": convo}])
    write_json(str(tmp_path / "dataset_info.json"), {"c": {"file_name": "c.json", "formatting": "sharegpt"}})
    with pytest.raises(DataError, match="none of its 1 rows.*turns must alternate"):
        load_prompts(data_cfg(dataset="c", dataset_dir=str(tmp_path)))


def test_prompts_with_tools_or_tool_calls_are_bad_rows_not_stripped_of_them(tmp_path):
    call = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    chats = [{"conversations": [{"from": "human", "value": "weather?"}], "tools": '[{"name": "get_weather"}]'},
             {"conversations": [{"from": "human", "value": "weather?"}, {"from": "function_call", "value": call},
                                {"from": "observation", "value": "12 C"}]},
             {"conversations": [{"from": "human", "value": "hi"}]}]
    write_json(str(tmp_path / "c.json"), chats)
    write_json(str(tmp_path / "dataset_info.json"), {"c": {"file_name": "c.json", "formatting": "sharegpt",
                                                            "columns": {"messages": "conversations", "tools": "tools"}}})
    ds, stats = load_prompts(data_cfg(dataset="c", dataset_dir=str(tmp_path)))
    assert len(ds) == 1 and stats["c"]["skipped"] == 2 and "tool calls" in stats["c"]["first_skipped"]


def test_ranking_datasets_and_missing_columns_are_refused_naming_them(prompt_dir, tmp_path):
    with pytest.raises(DataError, match="`pairs` is a ranking"):
        load_prompts(data_cfg(dataset="pairs", dataset_dir=prompt_dir))
    write_json(str(tmp_path / "q.json"), [{"question": "q"}])
    write_json(str(tmp_path / "dataset_info.json"), {"q": {"file_name": "q.json", "columns": {"prompt": "query_text"}}})
    with pytest.raises(DataError, match="no column `query_text`"):
        load_prompts(data_cfg(dataset="q", dataset_dir=str(tmp_path)))


def test_an_answer_column_beside_a_response_column_is_ambiguous(tmp_path):
    write_json(str(tmp_path / "a.json"), [{"instruction": "q", "output": "long answer", "answer": "short"}])
    write_json(str(tmp_path / "dataset_info.json"), {"a": {"file_name": "a.json"}})
    with pytest.raises(DataError, match="both an `answer` column and a response column `output`"):
        load_prompts(data_cfg(dataset="a", dataset_dir=str(tmp_path)))
