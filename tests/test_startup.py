"""Startup: config validation reads the arguments classes' field tables from a cache (equal to the live classes), and
a repeated `tuneforge estimate` of a config imports none of torch, transformers, peft, bitsandbytes or datasets."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from tuneforge.config import arg_fields
from tuneforge.config.loader import _ensure_registered
from tuneforge.config.train_args import coerce_training_value
from tuneforge.stages.registry import STAGES, Stage

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "datasets")
# Runs `tuneforge estimate ARGS`, then prints which heavy modules the process imported (the CLI exits via SystemExit).
PROBE = ("import atexit, json, runpy, sys\n"
         f"atexit.register(lambda: print('HEAVY=' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules))))\n"
         "sys.argv = ['tuneforge', 'estimate', *sys.argv[1:]]\n"
         "runpy.run_module('tuneforge.cli', run_name='__main__')\n")


def _builders():
    _ensure_registered()
    return {"(default)": Stage.args_class, **{name: record.args_class for name, record in STAGES.items()}}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(arg_fields, "_MEMO", {})
    return tmp_path / "cache" / "arg_fields"


@pytest.mark.parametrize("stage", ["(default)", "sft", "pt", "dpo", "kto", "rm", "ppo", "grpo"])
def test_the_cached_field_table_equals_a_live_introspection(stage, cache):
    make_class = _builders()[stage]
    live = arg_fields.live_fields(make_class())
    first = arg_fields.fields_of(make_class)  # a miss: read live, table written
    assert len(list(cache.iterdir())) == 1
    arg_fields._MEMO.clear()
    cached = arg_fields.fields_of(make_class)  # read back from the table
    assert all(isinstance(f, arg_fields.CachedField) for f in cached.values())
    assert arg_fields.encode_fields(cached) == arg_fields.encode_fields(live) == arg_fields.encode_fields(first)
    assert list(cached) == list(live)
    for name, f in live.items():  # what validation and describe() read, compared directly
        c = cached[name]
        assert c.type == f.type or arg_fields.encode_type(c.type) == arg_fields.encode_type(f.type), name
        assert (c.default is dataclasses.MISSING) == (f.default is dataclasses.MISSING) and (
            f.default is dataclasses.MISSING or c.default == f.default), name
        if f.default_factory is not dataclasses.MISSING:
            assert c.default_factory() == f.default_factory()
        assert c.metadata.get("help") == f.metadata.get("help")


@pytest.mark.parametrize("key,value", [("lr_scheduler_type", "cosine"), ("lr_scheduler_type", "cosin"), ("save_strategy", False),
                                       ("optim", "adamw_torch"), ("optim", "adam"), ("eval_strategy", 3), ("learning_rate", "1e-4"),
                                       ("max_steps", 2.5), ("report_to", "none"), ("bf16", "yes")])
def test_enum_fields_coerce_and_fail_alike_from_the_table(key, value, cache):
    live = arg_fields.live_fields(Stage.args_class())
    arg_fields.fields_of(Stage.args_class)
    arg_fields._MEMO.clear()
    cached = arg_fields.fields_of(Stage.args_class)

    def outcome(fields):
        try:
            return "ok", coerce_training_value(key, value, fields)
        except ValueError as e:
            return "error", str(e)

    assert outcome(cached) == outcome(live)


def test_a_corrupt_or_stale_table_is_rebuilt(cache, monkeypatch):
    arg_fields.fields_of(Stage.args_class)
    (path,) = cache.iterdir()
    path.write_text("{not json")
    arg_fields._MEMO.clear()
    assert "learning_rate" in arg_fields.fields_of(Stage.args_class)
    assert json.loads(path.read_text())["fields"]  # rewritten
    monkeypatch.setattr(arg_fields, "_version", lambda name: "999.0")  # another transformers: another table
    arg_fields._MEMO.clear()
    arg_fields.fields_of(Stage.args_class)
    assert len(list(cache.iterdir())) == 2


def test_a_builder_defined_in_a_function_is_read_live(cache):
    @dataclasses.dataclass
    class Toy:
        alpha: int = 1

    fields = arg_fields.fields_of(lambda: Toy)
    assert list(fields) == ["alpha"] and not cache.exists()


def test_a_repeated_estimate_imports_no_heavy_library(tiny_model_dir, data_dir, tmp_path):
    args = [f"model_name_or_path={tiny_model_dir}", "dataset=my_alpaca", f"dataset_dir={data_dir}", "template=chatml",
            "cutoff_len=64", "per_device_train_batch_size=2"]
    env = {**os.environ, "TUNEFORGE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    def estimate():
        res = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        heavy = json.loads(res.stdout.rsplit("HEAVY=", 1)[1])
        return res.stdout.rsplit("HEAVY=", 1)[0], heavy

    first, heavy_first = estimate()  # measures the data with the tokenizer, writes the field tables
    assert "transformers" in heavy_first
    second, heavy = estimate()
    assert heavy == [], heavy
    assert second == first and "largest batch:" in second
