"""The one run path: its event log, followed from another process; the pre-run memory check on the real data;
resolution and what it logs."""

import json
import logging
import os
import subprocess
import sys

import pytest

from conftest import ALPACA_ROWS, write_json
from tuneforge import config, run
from tuneforge.run import events as run_events

PHASES_OF_A_RUN = ["tokenizing", "memory_check", "loading", "training", "saving"]


def train_cmd(model_dir, data_dir, out, *extra):
    return [sys.executable, "-m", "tuneforge.cli", "train", f"model_name_or_path={model_dir}", "dataset=my_alpaca",
            f"dataset_dir={data_dir}", f"output_dir={out}", "template=chatml", "cutoff_len=64", "per_device_train_batch_size=2",
            "max_steps=4", "logging_steps=1", "learning_rate=1e-2", "save_strategy=no", "lora_rank=4", "disable_tqdm=true",
            f"cache_dir={os.path.join(str(out), '..', 'cache')}", "allocator=system", *extra]


def follow_subprocess(cmd, out):
    """Start `cmd` as another process and follow its run through events.jsonl alone; returns (events, returncode)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = list(run.follow(str(out), wait=True, poll_s=0.1, timeout_s=240))
    _, err = proc.communicate(timeout=120)
    return seen, proc.returncode, err


def test_a_finished_run_is_followed_from_another_process_through_its_event_log(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    seen, rc, err = follow_subprocess(train_cmd(tiny_model_dir, data_dir, out), out)
    assert rc == 0, err
    kinds = [e["event"] for e in seen]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert [e["phase"] for e in seen if e["event"] == "phase"] == PHASES_OF_A_RUN
    assert len({e["run"] for e in seen}) == 1
    progress = [e for e in seen if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == len(ALPACA_ROWS) * 4
    steps = [e for e in seen if e["event"] == "step" and "loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4] and all(e["total"] == 4 for e in steps)
    assert all(e["loss"] > 0 and e["learning_rate"] > 0 and e["tokens_per_second"] > 0 for e in steps)
    assert steps[-1]["eta_s"] == 0 and all(e["eta_s"] is not None and e["eta_s"] >= 0 for e in steps)
    finished = seen[-1]
    assert finished["metrics"]["train_tokens"] > 0 and os.path.isfile(out / "all_results.json")
    assert run.state(run.read_events(str(out)))["state"] == "finished"
    memory = next(e for e in seen if e["event"] == "memory")
    assert memory["known"] and "packed into one row" in memory["batch"]


def test_a_failing_run_ends_its_event_log_with_the_error_and_its_key(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    write_json(str(data / "rows.json"), [*ALPACA_ROWS, {"instruction": "Empty answer", "input": "", "output": ""}])
    write_json(str(data / "dataset_info.json"), {"my_alpaca": {"file_name": "rows.json"}})
    out = tmp_path / "run"
    seen, rc, err = follow_subprocess(train_cmd(tiny_model_dir, str(data), out, "strict=true"), out)
    assert rc == 2 and "Traceback" not in err
    failed = seen[-1]
    assert failed["event"] == "failed" and failed["key"] == "dataset"
    assert "dataset `my_alpaca` row 4: `output` is empty" in failed["error"] and "strict" in failed["error"]
    assert [e["phase"] for e in seen if e["event"] == "phase"] == ["tokenizing"]
    state = run.state(run.read_events(str(out)))
    assert state["state"] == "failed" and state["key"] == "dataset"
    assert not os.path.exists(out / "adapter_model.safetensors")


def test_the_event_log_is_appended_on_resume_never_truncated(tiny_model_dir, data_dir, tmp_path):
    from tuneforge.cli import main

    out = tmp_path / "run"
    args = train_cmd(tiny_model_dir, data_dir, out, "save_strategy=steps", "save_steps=2")[3:]
    assert main(args) == 0
    first = run.read_events(str(out))
    os.remove(out / "all_results.json")  # as if killed after its last checkpoint
    assert main([*args, "resume_from_checkpoint=auto"]) == 0
    both = run.read_events(str(out))
    assert both[:len(first)] == first
    starts = [e for e in both if e["event"] == "started"]
    assert len(starts) == 2 and starts[1]["resume_from_checkpoint"].endswith("checkpoint-4")
    assert run.state(both) == {**run.state(both), "state": "finished", "attempts": 2}


def test_a_half_written_last_line_is_left_for_later(tmp_path):
    log = run_events.EventLog(str(tmp_path), enabled=True)
    log.emit("started")
    with open(tmp_path / run_events.EVENTS_FILE, "a") as fh:
        fh.write('{"event": "pha')
    assert [e["event"] for e in run.read_events(str(tmp_path))] == ["started"]


def test_other_ranks_write_no_event_log(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run_events.EventLog(str(tmp_path)).emit("started")
    assert not os.path.exists(tmp_path / run_events.EVENTS_FILE)


def test_a_config_error_names_its_key_in_the_failed_event(tmp_path):
    log = run_events.EventLog(str(tmp_path), enabled=True)
    with pytest.raises(config.ConfigError) as e:
        config.load(None, {"output_dir": "o", "lora_rank": 0, "cutoff_len": -1})
    record = log.failed(e.value)
    assert record["key"] == "cutoff_len" or record["key"] == "lora_rank"
    assert {p["key"] for p in record["problems"]} == {"lora_rank", "cutoff_len"}


# ---------------------------------------------------------------- the pre-run memory check on the real data

def test_newcomer_defaults_are_estimated_on_the_real_rows_not_cutoff_len(tiny_model_dir, data_dir, tmp_path):
    """cutoff_len 2048 and batch 8 (the defaults) on ~20-token rows: the estimate is for the real packed batch."""
    from tuneforge.run.memory_check import largest_batch

    cfg = config.resolve(config.load(None, {"model_name_or_path": tiny_model_dir, "dataset": "my_alpaca", "dataset_dir": data_dir,
                                            "output_dir": str(tmp_path / "o"), "template": "chatml",
                                            "cache_dir": str(tmp_path / "cache")}), quiet=True)
    prepared = run.build(cfg)
    batch = largest_batch(prepared.cfg, prepared.stats)
    longest = prepared.stats["train_longest"]
    assert batch.rows == 1 and batch.seq == sum(longest[:8]) < 2048 and batch.longest == longest[0]
    padded = largest_batch(config.resolve(config.load(None, {"output_dir": "o", "packing": False}), quiet=True), prepared.stats)
    assert (padded.rows, padded.seq) == (8, longest[0])
    worst = largest_batch(cfg, None)
    assert (worst.rows, worst.seq) == (8, 2048) and "worst case" in worst.what


def test_a_run_leaves_its_largest_batch_for_a_later_estimate(tiny_model_dir, data_dir, tmp_path):
    """`tuneforge estimate` after a `tuneforge train` of the same config recalls the batch instead of tokenizing."""
    from tuneforge.run import batch_memo
    from tuneforge.run.memory_check import batch_from_data

    cfg = config.resolve(config.load(None, {"model_name_or_path": tiny_model_dir, "dataset": "my_alpaca", "dataset_dir": data_dir,
                                            "output_dir": str(tmp_path / "o"), "template": "chatml",
                                            "cache_dir": str(tmp_path / "cache")}), quiet=True)
    assert batch_memo.recall(cfg, batch_memo.key(cfg)) is None
    run.build(cfg)
    recalled = batch_memo.recall(cfg, batch_memo.key(cfg))
    fresh = batch_from_data(cfg)
    assert recalled is not None and (recalled.rows, recalled.seq, recalled.longest) == (fresh.rows, fresh.seq, fresh.longest)


def test_refusal_comes_only_after_every_config_check_and_names_the_batch(tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys):
    import tuneforge.memory as mem
    from tuneforge.cli import main

    monkeypatch.setattr(mem, "device_memory", lambda available_only=False: (1024.0, "RAM"))
    base = ["train", f"model_name_or_path={tiny_model_dir}", "dataset=my_alpaca", f"dataset_dir={data_dir}",
            f"output_dir={tmp_path}/run", "max_steps=1", f"cache_dir={tmp_path}/cache"]
    assert main([*base, "template=chatmll"]) == 2  # a bad value elsewhere is reported as itself, not as memory
    err = capsys.readouterr().err
    assert "template `chatmll` is unknown" in err and "needs about" not in err
    assert main([*base, "template=chatml"]) == 2
    err = capsys.readouterr().err
    assert "needs about" in err and "largest batch (the 8 longest rows packed" in err and "memory_check: false" in err
    assert not os.path.exists(tmp_path / "run" / "adapter_model.safetensors")  # refused before the model loaded
    failed = run.read_events(str(tmp_path / "run"))[-1]
    assert failed["event"] == "failed" and failed["key"] == "memory_check"
    assert main([*base, "template=chatml", "memory_check=false"]) == 0


def test_estimate_of_a_config_with_a_dataset_measures_its_rows_with_the_tokenizer_alone(tiny_model_dir, data_dir, tmp_path,
                                                                                         capsys, monkeypatch):
    import transformers

    from tuneforge.cli import main

    def no_weights(*a, **kw):
        raise AssertionError("estimate loaded model weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    args = ["estimate", f"model_name_or_path={tiny_model_dir}", "dataset=my_alpaca", f"dataset_dir={data_dir}", "template=chatml",
            f"cache_dir={tmp_path}/cache"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "largest batch: the 8 longest rows packed into one row of" in out
    assert main(["estimate", f"model_name_or_path={tiny_model_dir}"]) == 0
    assert "worst case: every row cutoff_len long" in capsys.readouterr().out


# ---------------------------------------------------------------- resolution

def test_resolution_fills_derived_values_logs_them_and_the_saved_config_shows_them(tiny_model_dir, data_dir, tmp_path, caplog):
    import yaml

    from tuneforge.cli import main

    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="tuneforge.config"):
        assert main(train_cmd(tiny_model_dir, data_dir, out, "lora_rank=4")[3:]) == 0
    text = caplog.text
    assert "resolved lora_alpha: 8 (2 x lora_rank)" in text and "resolved packing: true" in text
    saved = yaml.safe_load(open(out / "tuneforge_config.yaml"))
    assert saved["lora_alpha"] == 8 and saved["packing"] is True and saved["torch_dtype"] == "float32"
    assert saved["temperature"] == 0.7 and "export_dir" in saved  # every section is saved


def test_validation_never_changes_a_value_and_resolution_returns_a_copy():
    cfg = config.load(None, {"output_dir": "o"})
    assert cfg.method_section().lora_alpha is None and cfg.data.packing is None and cfg.changes is None
    resolved = config.resolve(cfg, quiet=True)
    assert resolved is not cfg and cfg.method_section().lora_alpha is None
    assert resolved.method_section().lora_alpha == 16 and config.resolve(resolved) is resolved


def test_checkpointing_is_spelled_as_the_installed_transformers_reads_it(monkeypatch):
    from tuneforge.train import checkpointing

    cfg = config.load(None, {"output_dir": "o", "gradient_checkpointing": True})
    assert "activation_checkpointing" in config.resolve(cfg, quiet=True).train.args
    monkeypatch.setattr(checkpointing, "installed_prefix", lambda: "gradient")  # a release without the new name
    cfg = config.load(None, {"output_dir": "o", "activation_checkpointing": True})
    args = config.resolve(cfg, quiet=True).train.args
    assert args.get("gradient_checkpointing") is True and "activation_checkpointing" not in args


def test_a_llamafactory_yaml_gets_llamafactorys_checkpointing_default_and_logs_it(caplog):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = config.load(os.path.join(root, "examples", "llamafactory_lora_sft.yaml"))
    with caplog.at_level(logging.INFO, logger="tuneforge.config"):
        resolved = config.resolve(cfg)
    assert "LLaMA-Factory default applied: gradient_checkpointing: true" in caplog.text
    assert resolved.train.args["activation_checkpointing"] is True and resolved.method.llamafactory_defaults is True
    off = config.resolve(config.load(os.path.join(root, "examples", "llamafactory_lora_sft.yaml"),
                                     ["disable_gradient_checkpointing=true"]), quiet=True)
    assert off.train.args["activation_checkpointing"] is False
    ours = config.resolve(config.load(os.path.join(root, "examples", "quickstart_lora_sft.yaml")), quiet=True)
    assert not ours.train.get("activation_checkpointing") and ours.method.llamafactory_defaults is False
    forced = config.resolve(config.load(os.path.join(root, "examples", "llamafactory_lora_sft.yaml"),
                                        ["llamafactory_defaults=false"]), quiet=True)
    assert not forced.train.get("activation_checkpointing")


def test_problems_are_key_message_pairs():
    with pytest.raises(config.ConfigError) as e:
        config.load(None, {"output_dir": "", "lora_rnak": 4, "learning_rate": "fast", "template": "nope", "lora_dropout": 2})
    keys = {p.key for p in e.value.problems}
    assert {"lora_rnak", "learning_rate"} <= keys
    with pytest.raises(config.ConfigError) as e:
        config.load(None, {"output_dir": "", "template": "nope", "lora_dropout": 2, "cutoff_len": 0})
    assert {p.key for p in e.value.problems} == {"output_dir", "template", "lora_dropout", "cutoff_len"}
    assert all(p.message for p in e.value.problems)


def test_describe_lists_every_key_with_type_default_help_and_owner():
    keys = {k.name: k for k in config.describe()}
    assert keys["lora_rank"].type == "int" and keys["lora_rank"].default == 8 and keys["lora_rank"].owner == "lora"
    assert keys["lora_rank"].llamafactory and not keys["memory_check"].llamafactory
    from tuneforge.stages.registry import STAGES

    assert keys["stage"].choices == sorted(STAGES) and "sft" in STAGES and "lora" in keys["finetuning_type"].choices
    assert keys["torch_dtype"].choices == ["auto", "float32", "bfloat16", "float16"]
    assert keys["num_virtual_tokens"].owner == "prefix,prompt"
    assert keys["learning_rate"].section == "train" and keys["learning_rate"].type == "float" and keys["learning_rate"].help
    assert keys["lr_scheduler_type"].choices and "cosine" in keys["lr_scheduler_type"].choices
    assert keys["logging_steps"].default == 10  # our default, not the library's
    assert keys["interleave_probs"].optional and keys["interleave_probs"].type == "list"
    assert all(k.help for k in keys.values() if k.section != "train")
    json.dumps([k.to_dict() for k in keys.values()])  # the Board reads it as JSON


def test_describe_gives_the_defaults_a_run_gets_and_each_stages_own_where_they_differ():
    keys = {k.name: k for k in config.describe()}
    assert keys["beta"].stage_defaults == {"dpo": 0.1, "grpo": 0.0, "kto": 0.1}
    assert keys["max_length"].stage_defaults["rm"] == 1024 and keys["max_length"].stage_defaults["dpo"] is None  # dpo's own
    assert keys["bf16"].default is False and keys["bf16"].stage_defaults is None  # TRL turns it on; runs here do not
    assert keys["lora_rank"].stage_defaults is None
    dpo = {k.name: k for k in config.describe("dpo")}
    assert dpo["beta"].default == 0.1 and dpo["bf16"].default is False


def test_a_gguf_not_converted_yet_is_its_own_phase(tmp_path, monkeypatch, tiny_model_dir):
    from tuneforge import models
    from tuneforge.models import ModelSource, gguf

    converted = tmp_path / "converted"
    monkeypatch.setattr(models, "resolve", lambda name: ModelSource(str(tmp_path / "m.gguf"), "m.gguf"))
    monkeypatch.setattr(gguf, "cached_folder", lambda source, root: str(converted))
    monkeypatch.setattr(models, "local_folder", lambda model_cfg, root: tiny_model_dir)
    log = run_events.EventLog(str(tmp_path / "out"), enabled=True)
    cfg = config.load(None, {"output_dir": str(tmp_path / "out")})
    assert run.model_folder(cfg, log) == tiny_model_dir
    converted.mkdir()
    (converted / "config.json").write_text("{}")
    run.model_folder(cfg, log)  # cached: no phase
    assert [e.get("phase") for e in run.read_events(str(tmp_path / "out"))] == ["converting_model"]
