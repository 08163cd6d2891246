"""`streaming: true`: the same examples as the in-memory path, read lazily from jsonl, JSON arrays, csv and parquet;
bad rows counted and skipped; settings it cannot work with refused before anything loads."""

import json
import os

import pytest

from conftest import ALPACA_ROWS, make_tokenizer, write_json
from tuneforge import config, data
from tuneforge.data import streaming

ROWS = [{"instruction": f"Question {i}: what is {i} plus {i}?", "input": "", "output": f"{2 * i}"} for i in range(40)]


def data_folder(tmp_path, rows, name="rows.jsonl"):
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    path = d / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif name.endswith(".json"):
        write_json(str(path), rows)
    elif name.endswith(".parquet"):
        from datasets import Dataset

        Dataset.from_list(rows).to_parquet(str(path))
    write_json(str(d / "dataset_info.json"), {"rows": {"file_name": name}})
    return str(d)


def data_cfg(folder, **kw):
    flat = {"output_dir": "o", "dataset": "rows", "dataset_dir": folder, "template": "chatml", "cutoff_len": 64,
            "streaming": True, "max_steps": 3, **kw}
    return config.load(None, flat).data


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json", "rows.parquet"])
def test_streaming_gives_the_same_examples_as_the_in_memory_path(tmp_path, name):
    tok = make_tokenizer()
    folder = data_folder(tmp_path, ROWS, name)
    memory, _ = data.build(data_cfg(folder, streaming=False), tok, str(tmp_path / "cache"))
    streamed, stats = streaming.build(data_cfg(folder, buffer_size=1), tok)  # a buffer of 1 keeps the file's order
    got = list(streamed["train"])
    assert [r["input_ids"] for r in got] == memory["train"]["input_ids"]
    assert [r["labels"] for r in got] == memory["train"]["labels"]
    assert stats["streaming"] and stats["datasets"]["rows"]["rows"] == len(ROWS)


def test_a_json_array_is_read_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(streaming, "CHUNK", 7)  # objects span many chunks
    folder = data_folder(tmp_path, ALPACA_ROWS * 3, "rows.json")
    got = list(streaming._file_rows(os.path.join(folder, "rows.json"), "rows"))
    assert got == ALPACA_ROWS * 3


def test_bad_rows_are_counted_and_skipped_and_strict_stops(tmp_path):
    rows = [*ROWS[:3], {"instruction": 5, "output": "x"}, {"instruction": "q", "output": ["a"]}, *ROWS[3:6]]
    folder = data_folder(tmp_path, rows)
    parts, stats = streaming.build(data_cfg(folder), make_tokenizer())
    assert len(list(parts["train"])) == 6 and stats["datasets"]["rows"]["skipped"] == 2
    parts, _ = streaming.build(data_cfg(folder, strict=True), make_tokenizer())
    with pytest.raises(data.DataError, match="row 3"):
        list(parts["train"])


def test_val_size_holds_out_the_first_rows(tmp_path):
    parts, _ = streaming.build(data_cfg(data_folder(tmp_path, ROWS), val_size=5, buffer_size=1), make_tokenizer())
    assert len(parts["eval"]) == 5 and len(list(parts["train"])) == len(ROWS) - 5


def test_a_broken_line_is_named(tmp_path):
    folder = data_folder(tmp_path, ROWS[:2])
    with open(os.path.join(folder, "rows.jsonl"), "a") as fh:
        fh.write('{"instruction": "x", "output": \n')
    parts, _ = streaming.build(data_cfg(folder), make_tokenizer())
    with pytest.raises(data.DataError, match="line 3 column"):
        list(parts["train"])


@pytest.mark.parametrize("flat, key, words", [
    ({"max_steps": None}, "max_steps", "set max_steps"),
    ({"val_size": 0.1}, "val_size", "number of rows"),
    ({"buffer_size": 0}, "buffer_size", "> 0"),
])
def test_settings_streaming_cannot_work_with_are_refused(tmp_path, flat, key, words):
    args = {"output_dir": "o", "dataset": "rows", "streaming": True, "max_steps": 3, **flat}
    args = {k: v for k, v in args.items() if v is not None}
    with pytest.raises(config.ConfigError) as e:
        config.load(None, args)
    assert e.value.problems[0].key == key and words in str(e.value)


def test_a_streamed_run_trains_for_max_steps(tiny_model_dir, tmp_path):
    from tuneforge import run

    folder = data_folder(tmp_path, ROWS)
    cfg = config.load(None, {"model_name_or_path": tiny_model_dir, "dataset": "rows", "dataset_dir": folder, "template": "chatml",
                             "streaming": True, "max_steps": 3, "per_device_train_batch_size": 2, "logging_steps": 1,
                             "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")})
    metrics = run.train(cfg)
    assert metrics["train_tokens"] > 0
    with open(tmp_path / "run" / "trainer_log.jsonl") as fh:
        assert [r["step"] for r in map(json.loads, fh) if "loss" in r] == [1, 2, 3]
    assert not os.path.exists(tmp_path / "cache" / "tokenized")  # nothing cached
