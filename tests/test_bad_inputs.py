"""The bad-input corpus: what users get wrong in configs and datasets. Each case is refused by `tuneforge train` in
under 10 s, before any model weights load, with exit code 2, no traceback, and a message naming the key or file and
the fix. Bad rows are reported (with `strict: true`, refused) naming the row and the field."""

import json
import os
import time

import pytest

from conftest import ALPACA_ROWS, write_json
from tuneforge.cli import main

CONFIG_CASES = [
    # (overrides, words the message must hold)
    ("lora_rnak=8", "did you mean `lora_rank`?"),
    ("learnig_rate=1e-4", "did you mean `learning_rate`?"),
    ("finetuning_type=lorra", "did you mean `lora`?"),
    ("stage=sftt", "did you mean `sft`?"),
    ("template=chatmll", "did you mean `chatml`?"),
    ("learning_rate=abc", "learning_rate"),
    ("learning_rate=-1", "learning_rate must be > 0"),
    ("lora_rank=0", "lora_rank must be > 0"),
    ("lora_rank=-4", "lora_rank must be > 0"),
    ("lora_rank=eight", "lora_rank"),
    ("lora_alpha=0", "lora_alpha must be > 0"),
    ("lora_dropout=1.5", "lora_dropout must be in [0, 1)"),
    ("loraplus_lr_ratio=-2", "loraplus_lr_ratio must be > 0"),
    ("cutoff_len=0", "cutoff_len must be > 0"),
    ("cutoff_len=long", "cutoff_len"),
    ("max_samples=0", "max_samples must be > 0"),
    ("val_size=-0.1", "val_size must be"),
    ("val_size=1.5", "val_size must be"),
    ("dataset=no_such_dataset", "dataset `no_such_dataset` is not in"),
    ("dataset=my_alpacca", "did you mean `my_alpaca`?"),
    ("quantization_bit=3", "quantization_bit must be 4 or 8"),
    ("quantization_bit=4 finetuning_type=full", "quantization_bit needs an adapter method"),
    ("bf16=true fp16=true", "bf16 and fp16 are both true"),
    ("per_device_train_batch_size=0", "per_device_train_batch_size"),
    ("gradient_accumulation_steps=0", "gradient_accumulation_steps"),
    ("num_train_epochs=-1", "num_train_epochs"),
    ("lr_scheduler_type=cosinee", "did you mean `cosine`?"),
    ("optim=adamw_torchh", "did you mean `adamw_torch`?"),
    ("max_grad_norm=-1", "max_grad_norm"),
    ("seed=abc", "seed"),
    ("logging_steps=0", "logging_steps"),
    ("resume_from_checkpoint=auto overwrite_output_dir=true", "drop one"),
    ("mix_strategy=interleave", "mix_strategy"),
    ("interleave_probs=0.5,0.5", "interleave_probs needs mix_strategy"),
    ("mix_strategy=interleave_under interleave_probs=0.2,0.3,0.5", "give one per dataset"),
    ("temperature=-1", "temperature must be >= 0"),
    ("top_p=0", "top_p must be in (0, 1]"),
    ("torch_dtype=float8", "torch_dtype"),
    ("attn_implementation=flash", "attn_implementation"),
    ("gradient_checkpointing=maybe", "gradient_checkpointing"),
    ("finetuning_type=lisa lisa_layers=0", "lisa_layers"),
    ("finetuning_type=lisa lisa_layers=500", "lisa_layers"),
    ("finetuning_type=freeze freeze_trainable_layers=999", "freeze_trainable_layers"),
    ("finetuning_type=prompt num_virtual_tokens=0", "num_virtual_tokens"),
    ("finetuning_type=galore galore_rank=0", "galore_rank"),
    ("pissa_init=true quantization_bit=4", "pissa_init"),
    ("streaming=true", "set max_steps"),
    ("streaming=true max_steps=5 buffer_size=0", "buffer_size must be > 0"),
    ("report_to=wandbb", "did you mean `wandb`?"),
    ("export_size=0", "export_size must be > 0"),
    ("adapter_name_or_path=/no/such/adapter", "/no/such/adapter"),
    ("finetuning_type=full adapter_name_or_path=/tmp", "adapter_name_or_path needs an adapter method"),
    ("resume_from_checkpoint=/no/such/checkpoint", "/no/such/checkpoint"),
    ("model_name_or_path=/no/such/model", "/no/such/model"),
    ("model_name_or_path=someone/unknown-model-xyz", "someone/unknown-model-xyz"),
    ("dataset_dir=/no/such/folder", "/no/such/folder"),
    ("output_dir=", "`output_dir` has no value"),
    ("frobnicate=1", "unknown key `frobnicate`"),
]

YAML_CASES = [
    # (file bytes, words)
    (b"output_dir: o\nlora_rank: 8\nlora_rank: 16\n", "`lora_rank` is set twice"),
    (b"output_dir: o\nlearning_rate: \xff\xfe\n", "is not UTF-8 text"),
    (b"\x00\x01\x02binary", "is not valid YAML"),
    (b"- a\n- b\n", "must be a mapping"),
    (b"output_dir: o\n  lora_rank: 8\n lora_alpha: [\n", "is not valid YAML"),
    (b"output_dir: o\nlora_rank: {a: 1}\n", "`lora_rank` must be an integer"),
    (b"output_dir: o\n\tlora_rank: 8\n", "is not valid YAML"),
]


def _refused(args, capsys):
    start = time.perf_counter()
    rc = main(args)
    took = time.perf_counter() - start
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert took < 10, took
    assert "Traceback" not in err and err.startswith("error: "), err
    return err


@pytest.fixture(scope="module", autouse=True)
def warm_imports():
    """The libraries are imported once before the clock runs (the first import is not what the 10 s are about)."""
    import transformers  # noqa: F401

    from tuneforge import config

    config.load(None, {"output_dir": "o"})


@pytest.fixture
def no_model_load(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("the model was loaded")))


@pytest.mark.parametrize("overrides, words", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_a_bad_config_value_is_refused_naming_the_key(overrides, words, tiny_model_dir, data_dir, tmp_path, capsys, no_model_load):
    base = {"model_name_or_path": tiny_model_dir, "dataset": "my_alpaca", "dataset_dir": data_dir, "template": "chatml",
            "output_dir": f"{tmp_path}/run", "cache_dir": f"{tmp_path}/cache"}
    extra = dict(kv.split("=", 1) for kv in overrides.split())
    args = ["train", *[f"{k}={v}" for k, v in {**base, **extra}.items()]]
    err = _refused(args, capsys)
    assert words in err, err


@pytest.mark.parametrize("text, words", YAML_CASES, ids=[str(i) for i in range(len(YAML_CASES))])
def test_a_broken_yaml_file_is_refused_naming_the_file(text, words, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    err = _refused(["train", str(path)], capsys)
    assert words in err and (str(path) in err or "`" in words), err  # the file, or the key in it


def test_a_missing_config_file_is_named(tmp_path, capsys):
    err = _refused(["train", str(tmp_path / "nope.yaml")], capsys)
    assert "nope.yaml" in err


# ------------------------------------------------------------------ datasets: registry and files

GOOD_ENTRY = {"file_name": "rows.json"}


def _files(tmp_path, info, files):
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    for name, content in files.items():
        (d / name).write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    if info is not None:
        (d / "dataset_info.json").write_bytes(info if isinstance(info, bytes) else json.dumps(info).encode())
    return str(d)


FILE_CASES = [
    # (dataset_info.json, files, dataset name, words)
    (b"{not json", {}, "d", "is not valid JSON"),
    ([1, 2], {}, "d", "must map dataset names to entries"),
    ({"d": "rows.json"}, {}, "d", "must be a mapping"),
    ({"d": {"file_nmae": "rows.json"}}, {}, "d", "did you mean `file_name`?"),
    ({"d": {"columns": {}}}, {}, "d", "has no `file_name`"),
    ({"d": {"hf_hub_url": "org/data"}}, {}, "d", "tuneforge runs offline"),
    ({"d": {"file_name": "rows.json", "formatting": "sharegtp"}}, {"rows.json": ALPACA_ROWS}, "d", "did you mean `sharegpt`?"),
    ({"d": {"file_name": "missing.json"}}, {}, "d", "`missing.json` does not exist"),
    ({"d": {"file_name": "rows.json", "columns": ["prompt"]}}, {"rows.json": ALPACA_ROWS}, "d", "`columns` must be a mapping"),
    ({"d": {"file_name": "rows.json", "formatting": "sharegpt", "tags": {"role": "from"}}}, {"rows.json": []}, "d", "unknown tag `role`"),
    ({"d": {"file_name": "rows.json", "columns": {"prompt": "question"}}}, {"rows.json": ALPACA_ROWS}, "d", "has no column `question`"),
    ({"d": {"file_name": "rows.json", "ranking": True}}, {"rows.json": ALPACA_ROWS}, "d", "ranking (preference) dataset"),
    ({"d": GOOD_ENTRY}, {"rows.json": b'[{"instruction": "caf\xe9", "output": "x"}]'}, "d", "is not UTF-8"),
    ({"d": GOOD_ENTRY}, {"rows.json": b'[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]'}, "d",
     "line 2 column"),
    ({"d": {"file_name": "rows.jsonl"}}, {"rows.jsonl": b'{"instruction": "a", "output": "b"}\n{"instruction": \n'}, "d", "line 2 column"),
    ({"d": GOOD_ENTRY}, {"rows.json": b'{\n "instruction": "a",\n "output": "b"\n}'}, "d", "holds one JSON object"),
    ({"d": GOOD_ENTRY}, {"rows.json": ["a", "b"]}, "d", "not an object of named fields"),
    ({"d": GOOD_ENTRY}, {"rows.json": b""}, "d", "has no rows"),
    ({"d": GOOD_ENTRY}, {"rows.json": []}, "d", "has no rows"),
    ({"d": GOOD_ENTRY}, {"rows.json": [{"instruction": 1, "output": 2}] * 3}, "d", "none of its 3 rows is usable"),
    ({"d": {"file_name": "folder"}}, {"folder": None}, "d", "no json, jsonl, csv or parquet files"),
    ({"d": {"file_name": "notes.txt"}}, {"notes.txt": b"hello"}, "d", "is not json, jsonl, csv or parquet"),
    ({"d": GOOD_ENTRY}, {"rows.json": [{"question": "a", "answer": "b"}]}, "rows.json", "cannot tell its format"),
    ({"d": {"file_name": "rows.parquet"}}, {"rows.parquet": b"PAR1 not really parquet"}, "d", "cannot read `"),
    ({"d": GOOD_ENTRY}, {"rows.json": [{"instruction": "q", "output": "a"}]}, "d,e", "dataset `e` is not in"),
    ({"d": {"file_name": "rows.jsonl"}}, {"rows.jsonl": b'{"instruction": "a", "output": "b"}\n[1, 2]\n'}, "d", "row 1 is list"),
    ({"d": {"file_name": "rows.csv"}}, {"rows.csv": b"instruction,output\n\"unterminated,quote\n"}, "d", "none of its"),
    ({"d": GOOD_ENTRY}, {"rows.json": [{"instruction": float("nan"), "output": "a"}]}, "d", "must be text"),
]


@pytest.mark.parametrize("info, files, name, words", FILE_CASES, ids=[str(i) for i in range(len(FILE_CASES))])
def test_a_bad_dataset_file_or_registry_entry_is_refused_naming_it(info, files, name, words, tiny_model_dir, tmp_path, capsys,
                                                                   no_model_load):
    folder_files = {k: v for k, v in files.items() if v is not None}
    folder = _files(tmp_path, info, folder_files)
    for k, v in files.items():
        if v is None:
            os.makedirs(os.path.join(folder, k), exist_ok=True)
    err = _refused(["train", f"model_name_or_path={tiny_model_dir}", f"dataset={name}", f"dataset_dir={folder}", "template=chatml",
                    f"output_dir={tmp_path}/run", f"cache_dir={tmp_path}/cache"], capsys)
    assert words in err, err


# ------------------------------------------------------------------ bad rows (reported; strict: true refuses them)

ROW_CASES = [
    # (format, the bad row, words naming the field)
    ("alpaca", {"instruction": 5, "output": "a"}, "`instruction` must be text, not int"),
    ("alpaca", {"instruction": "q", "output": ["a"]}, "`output` must be text, not list"),
    ("alpaca", {"instruction": "q", "output": {"text": "a"}}, "`output` must be text, not dict"),
    ("alpaca", {"instruction": "q", "output": True}, "`output` must be text, not bool"),
    ("alpaca", {"instruction": "q", "output": ""}, "`output` is empty"),
    ("alpaca", {"instruction": "", "output": "a"}, "is empty"),
    ("alpaca", {"instruction": "q"}, "`output` is empty"),
    ("alpaca", {"instruction": "q", "input": 3, "output": "a"}, "`input` must be text"),
    ("alpaca", {"instruction": "q", "output": "a", "history": [["only one"]]}, "must be a [question, answer] pair"),
    ("alpaca", {"instruction": "q", "output": "a", "history": "hi"}, "must be a [question, answer] pair"),
    ("alpaca", {"instruction": "q", "output": "a", "system": 7}, "`system` must be text"),
    ("sharegpt", {"conversations": "hello"}, "is empty or not a list"),
    ("sharegpt", {"conversations": []}, "is empty or not a list"),
    ("sharegpt", {"conversations": ["hi", "there"]}, "must hold message objects"),
    ("sharegpt", {"conversations": [{"from": "person", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, "`from` = 'person'"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "hi"}, {"from": "human", "value": "again"}]}, "turns must alternate"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "hi"}]}, "does not end with an assistant turn"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}]}, "empty `value`"),
    ("sharegpt", {"conversations": [{"from": "human", "value": 1}, {"from": "gpt", "value": "a"}]}, "must be text, not int"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "s"}, {"from": "gpt", "value": "a"}]},
     "only the first message may be one"),
    ("sharegpt", {"conversations": [{"from": "gpt", "value": "a"}]}, "turns must alternate"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "f(x)"},
                                    {"from": "observation", "value": "1"}, {"from": "gpt", "value": "a"}]}, "not JSON"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": "[{bad"}, "`tools` is not JSON"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": [{"description": "x"}]},
     "not a function definition with a `name`"),
    ("openai", {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}, "`role` = 'bot'"),
    ("openai", {"messages": [{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}]}, "must be text, not list"),
    ("openai", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]}, "empty `content`"),
    ("openai", {"messages": {"role": "user"}}, "is empty or not a list"),
]
GOOD_ROWS = {"alpaca": {"instruction": "q", "input": "", "output": "a", "history": [], "system": ""},
             "sharegpt": {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
             "openai": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}}


@pytest.mark.parametrize("fmt, row, words", ROW_CASES, ids=[str(i) for i in range(len(ROW_CASES))])
def test_a_bad_row_is_reported_and_strict_refuses_it_naming_row_and_field(fmt, row, words, tiny_model_dir, tmp_path, capsys,
                                                                           no_model_load):
    from tuneforge import config
    from tuneforge.data import pipeline

    entry = {"file_name": "rows.json", **({"formatting": fmt} if fmt != "alpaca" else {})}
    if fmt == "alpaca":
        entry["columns"] = {"prompt": "instruction", "query": "input", "response": "output", "history": "history", "system": "system"}
    folder = _files(tmp_path, {"d": entry}, {"rows.json": [GOOD_ROWS[fmt], row, GOOD_ROWS[fmt]]})
    cfg = config.load(None, {"dataset": "d", "dataset_dir": folder, "output_dir": "o"})
    _, stats = pipeline.load_conversations(cfg.data)
    assert stats["d"]["skipped"] == 1 and stats["d"]["first_skipped"].startswith("row 1:") and words in stats["d"]["first_skipped"]
    err = _refused(["train", f"model_name_or_path={tiny_model_dir}", "dataset=d", f"dataset_dir={folder}", "template=chatml",
                    "strict=true", f"output_dir={tmp_path}/run", f"cache_dir={tmp_path}/cache"], capsys)
    assert "row 1" in err and words in err, err


def test_the_corpus_is_large_enough():
    assert len(CONFIG_CASES) + len(YAML_CASES) + 1 >= 50
    assert len(FILE_CASES) + len(ROW_CASES) >= 50
