"""Preference data: the three ranking styles give the same pairs, prompts encode exactly as apply_chat_template,
KTO rows (tagged or split from pairs), bad rows reported by number, truncation and the tokenized cache."""

import pytest

from conftest import write_json
from tuneforge import config
from tuneforge.data import DataError
from tuneforge.data.preference import (build_pairs, build_unpaired, encode_pair, fit_lengths, load_pairs,
                                       load_unpaired)

PAIRS = [  # (system, history, question, chosen, rejected)
    ("Be brief.", [], "What is the capital of France?", "Paris.", "London, I think."),
    ("", [("hello", "hello there")], "Name a colour.", "Red.", "A colour is a thing."),
    ("", [], "What is 2 + 3?", "5", "23"),
]


def data_cfg(**kw):
    return config.load(None, {"output_dir": "o", **kw}).data


def alpaca_rows():
    return [{"instruction": q, "input": "", "chosen": c, "rejected": r, "system": s, "history": [list(h) for h in hist]}
            for s, hist, q, c, r in PAIRS]


def chat_rows(role, content, user, assistant, system="system", column="conversations"):
    rows = []
    for s, hist, q, c, r in PAIRS:
        convo = [{role: system, content: s}] if s else []
        for a, b in hist:
            convo += [{role: user, content: a}, {role: assistant, content: b}]
        convo.append({role: user, content: q})
        rows.append({column: convo, "chosen": {role: assistant, content: c}, "rejected": {role: assistant, content: r}})
    return rows


@pytest.fixture
def pref_dir(tmp_path):
    d = str(tmp_path)
    write_json(f"{d}/alpaca.json", alpaca_rows())
    write_json(f"{d}/sharegpt.json", chat_rows("from", "value", "human", "gpt"))
    write_json(f"{d}/openai.json", chat_rows("role", "content", "user", "assistant", column="messages"))
    write_json(f"{d}/kto.json", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
                                  "label": True},
                                 {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}],
                                  "label": False}])
    write_json(f"{d}/dataset_info.json", {
        "p_alpaca": {"file_name": "alpaca.json", "ranking": True, "columns": {
            "prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected", "system": "system",
            "history": "history"}},
        "p_sharegpt": {"file_name": "sharegpt.json", "ranking": True, "formatting": "sharegpt",
                       "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "p_openai": {"file_name": "openai.json", "ranking": True, "formatting": "openai",
                     "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"}},
        "k_openai": {"file_name": "kto.json", "formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"},
                     "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
        "sft_only": {"file_name": "kto.json", "formatting": "openai"},
    })
    return d


def expected_pairs():
    out = []
    for s, hist, q, c, r in PAIRS:
        prompt = [{"role": "system", "content": s}] if s else []
        for a, b in hist:
            prompt += [{"role": "user", "content": a}, {"role": "assistant", "content": b}]
        out.append({"prompt": prompt + [{"role": "user", "content": q}], "chosen": c, "rejected": r})
    return out


@pytest.mark.parametrize("name", ["p_alpaca", "p_sharegpt", "p_openai"])
def test_the_three_ranking_styles_give_the_same_pairs(pref_dir, name):
    ds, stats = load_pairs(data_cfg(dataset=name, dataset_dir=pref_dir))
    assert list(ds) == expected_pairs()
    assert stats[name]["skipped"] == 0


def test_unregistered_trl_style_file_is_read_as_pairs(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "good"}],
             "rejected": [{"role": "assistant", "content": "bad"}]},
            {"prompt": [{"role": "user", "content": "q2"}], "chosen": "good2", "rejected": "bad2"}]
    path = write_json(str(tmp_path / "pairs.json"), rows)
    ds, _ = load_pairs(data_cfg(dataset=path, dataset_dir=str(tmp_path / "nowhere")))
    assert list(ds) == [{"prompt": [{"role": "user", "content": "q"}], "chosen": "good", "rejected": "bad"},
                        {"prompt": [{"role": "user", "content": "q2"}], "chosen": "good2", "rejected": "bad2"}]


def test_encode_pair_prompt_equals_apply_chat_template_and_replies_complete_it(tiny_tokenizer):
    for pair in expected_pairs():
        enc = encode_pair(tiny_tokenizer, pair["prompt"], pair["chosen"], pair["rejected"], cutoff_len=1024)
        prompt = tiny_tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=False)
        assert enc["prompt_ids"] == tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for reply in ("chosen", "rejected"):
            full = tiny_tokenizer.apply_chat_template(pair["prompt"] + [{"role": "assistant", "content": pair[reply]}],
                                                      tokenize=False)
            assert enc["prompt_ids"] + enc[f"{reply}_ids"] == tiny_tokenizer(full, add_special_tokens=False)["input_ids"]
            assert tiny_tokenizer.decode(enc[f"{reply}_ids"]).startswith(pair[reply] + "<|im_end|>")  # end of turn included


def test_truncation_keeps_the_prompt_end_and_the_reply_start(tiny_tokenizer):
    prompt = [{"role": "user", "content": "hello world " * 40}]
    enc = encode_pair(tiny_tokenizer, prompt, "a b c d e f g " * 10, "0 1", cutoff_len=64)
    full = encode_pair(tiny_tokenizer, prompt, "a b c d e f g " * 10, "0 1", cutoff_len=10_000)
    assert len(enc["prompt_ids"]) + max(len(enc["chosen_ids"]), len(enc["rejected_ids"])) <= 64
    assert enc["prompt_ids"] == full["prompt_ids"][-len(enc["prompt_ids"]):]  # the assistant header stays
    assert enc["chosen_ids"] == full["chosen_ids"][:len(enc["chosen_ids"])] and enc["rejected_ids"] == full["rejected_ids"]
    assert fit_lengths(10, 10, 100) == (10, 10) and fit_lengths(10, 300, 100) == (10, 90) and fit_lengths(300, 100, 100) == (75, 25)


def test_bad_rows_are_skipped_and_reported_with_their_numbers(tmp_path, caplog):
    rows = alpaca_rows() + [{"instruction": "q", "chosen": "c"},  # row 3: no rejected
                            {"instruction": "q", "chosen": 5, "rejected": "r"},  # row 4: a number
                            {"instruction": "", "chosen": "c", "rejected": "r"}]  # row 5: empty prompt
    write_json(str(tmp_path / "a.json"), rows)
    write_json(str(tmp_path / "dataset_info.json"), {"a": {"file_name": "a.json", "ranking": True}})
    ds, stats = load_pairs(data_cfg(dataset="a", dataset_dir=str(tmp_path)))
    assert len(ds) == 3 and stats["a"]["skipped"] == 3
    assert [i for i, _ in stats["a"]["bad_rows"]] == [3, 4, 5]
    assert "`rejected` is empty or missing" in stats["a"]["bad_rows"][0][1]
    assert "must be text, not int" in stats["a"]["bad_rows"][1][1]
    assert "row 3:" in caplog.text and "row 5:" in caplog.text
    with pytest.raises(DataError, match="row 3: `rejected` is empty or missing.*strict"):
        load_pairs(data_cfg(dataset="a", dataset_dir=str(tmp_path), strict=True))


def test_wrong_reply_types_in_sharegpt_are_reported(tmp_path):
    rows = chat_rows("from", "value", "human", "gpt")
    rows[1]["rejected"] = 7
    rows[2]["chosen"] = {"from": "human", "value": "not the assistant"}
    write_json(str(tmp_path / "s.json"), rows)
    write_json(str(tmp_path / "dataset_info.json"), {"s": {"file_name": "s.json", "ranking": True, "formatting": "sharegpt"}})
    _, stats = load_pairs(data_cfg(dataset="s", dataset_dir=str(tmp_path)))
    assert [i for i, _ in stats["s"]["bad_rows"]] == [1, 2]
    assert "`rejected` must be a message object or text, not int" in stats["s"]["bad_rows"][0][1]
    assert "turns must alternate" in stats["s"]["bad_rows"][1][1]


def test_tool_calling_rows_are_reported_not_trained_with_their_calls_dropped(tmp_path):
    rows = chat_rows("from", "value", "human", "gpt")
    call = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    rows[0]["chosen"] = {"from": "function_call", "value": call}  # the reply's text would be empty
    rows[1]["tools"] = '[{"name": "get_weather", "parameters": {}}]'  # the prompt would lose its tools
    rows[2]["conversations"] = [{"from": "human", "value": "weather?"}, {"from": "function_call", "value": call},
                                {"from": "observation", "value": "12 C"}]  # a tool result in the prompt
    rows.append(chat_rows("from", "value", "human", "gpt")[0])  # a plain pair stays
    write_json(str(tmp_path / "s.json"), rows)
    write_json(str(tmp_path / "dataset_info.json"), {"s": {"file_name": "s.json", "ranking": True, "formatting": "sharegpt",
                                                            "columns": {"messages": "conversations", "tools": "tools"}}})
    _, stats = load_pairs(data_cfg(dataset="s", dataset_dir=str(tmp_path)))
    assert [i for i, _ in stats["s"]["bad_rows"]] == [0, 1, 2]
    assert all("tool calls" in m and "stage sft" in m for _, m in stats["s"]["bad_rows"]), stats["s"]["bad_rows"]


def test_a_missing_reply_column_and_a_non_preference_entry_are_named(pref_dir, tmp_path):
    with pytest.raises(DataError, match="`sft_only` is not a preference dataset.*ranking: true"):
        load_pairs(data_cfg(dataset="sft_only", dataset_dir=pref_dir))
    other = str(tmp_path / "other")
    write_json(f"{other}/a.json", alpaca_rows())
    write_json(f"{other}/dataset_info.json", {"a": {"file_name": "a.json", "ranking": True, "columns": {"chosen": "good"}}})
    with pytest.raises(DataError, match="no column `good` \\(its `chosen` column\\)"):
        load_pairs(data_cfg(dataset="a", dataset_dir=other))
    with pytest.raises(DataError, match="neither `ranking: true` nor a `kto_tag` column"):
        load_unpaired(data_cfg(dataset="sft_only", dataset_dir=pref_dir))


def test_kto_rows_as_tagged_and_pairs_split_into_desirable_and_undesirable(pref_dir):
    ds, _ = load_unpaired(data_cfg(dataset="k_openai", dataset_dir=pref_dir))
    assert list(ds) == [{"prompt": [{"role": "user", "content": "hi"}], "completion": "hello!", "label": True},
                        {"prompt": [{"role": "user", "content": "hi"}], "completion": "go away", "label": False}]
    ds, _ = load_unpaired(data_cfg(dataset="p_sharegpt", dataset_dir=pref_dir))
    first = expected_pairs()[0]
    assert list(ds)[:2] == [{"prompt": first["prompt"], "completion": first["chosen"], "label": True},
                            {"prompt": first["prompt"], "completion": first["rejected"], "label": False}]


def test_a_kto_tag_that_is_not_a_boolean_is_a_bad_row(tmp_path):
    rows = [{"instruction": "q", "output": "a", "tag": True}, {"instruction": "q", "output": "a", "tag": "maybe"}]
    write_json(str(tmp_path / "k.json"), rows)
    write_json(str(tmp_path / "dataset_info.json"), {"k": {"file_name": "k.json", "columns": {"kto_tag": "tag"}}})
    ds, stats = load_unpaired(data_cfg(dataset="k", dataset_dir=str(tmp_path)))
    assert len(ds) == 1 and stats["k"]["bad_rows"] == [[1, "`tag` must be true or false, not 'maybe'"]]


def test_build_pairs_stats_split_and_cache(pref_dir, tmp_path, tiny_tokenizer):
    cfg = data_cfg(dataset="p_alpaca,p_openai", dataset_dir=pref_dir, val_size=2)
    calls = []
    parts, stats = build_pairs(cfg, tiny_tokenizer, str(tmp_path / "cache"), progress=lambda d, t: calls.append((d, t)))
    assert set(parts) == {"train", "eval"} and len(parts["train"]) == 4 and len(parts["eval"]) == 2
    assert parts["train"].column_names == ["prompt_ids", "chosen_ids", "rejected_ids"]
    lengths = sorted((len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in parts["train"]),
                     reverse=True)
    assert stats["train_longest"] == lengths and stats["train_examples"] == 4 and calls[-1] == (4, 4)
    again, stats_again = build_pairs(cfg, tiny_tokenizer, str(tmp_path / "cache"))
    assert stats_again == stats and list(again["train"]) == list(parts["train"])
    unpaired, ustats = build_unpaired(data_cfg(dataset="p_alpaca", dataset_dir=pref_dir), tiny_tokenizer, str(tmp_path / "cache"))
    assert set(unpaired["train"].column_names) == {"prompt_ids", "completion_ids", "label"}
    assert (ustats["train_desirable"], ustats["train_undesirable"]) == (3, 3)
    labels = unpaired["train"]["label"]
    assert labels != [True, False] * 3  # shuffled once: a pair's halves are not neighbours by construction
