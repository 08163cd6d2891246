"""Rank-safe side effects: the rank from torch.distributed or torchrun's variables, main_process_first (the main
process first, the others wait), and only rank 0 writing shared files (artifacts, caches, PiSSA folders)."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tuneforge import TuneforgeError
from tuneforge import distributed as dist


@pytest.fixture
def as_rank(monkeypatch):
    """Make this process look like torchrun's rank `r` of `n` (before torch.distributed is initialized)."""
    def set_rank(r: int, n: int = 2):
        monkeypatch.setenv("RANK", str(r))
        monkeypatch.setenv("WORLD_SIZE", str(n))
    return set_rank


def test_rank_defaults_to_a_single_main_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (dist.rank(), dist.world_size(), dist.is_main_process()) == (0, 1, True)


def test_rank_comes_from_torchrun_variables(as_rank):
    as_rank(3, 4)
    assert (dist.rank(), dist.world_size(), dist.is_main_process()) == (3, 4, False)
    as_rank(0, 4)
    assert dist.is_main_process()


def test_main_process_runs_the_body_at_once(as_rank):
    as_rank(0)
    ran = []
    t0 = time.monotonic()
    with dist.main_process_first("building the cache", ready=lambda: False, timeout_s=5):
        ran.append(True)
    assert ran and time.monotonic() - t0 < 1


def test_other_ranks_wait_until_ready(as_rank):
    as_rank(1)
    flag = threading.Event()
    threading.Timer(0.7, flag.set).start()
    with dist.main_process_first("building the cache", ready=flag.is_set, timeout_s=10):
        assert flag.is_set()  # the body ran only once the main process's result was there


def test_other_ranks_give_up_after_the_timeout_naming_what(as_rank):
    as_rank(1)
    ran = []
    with pytest.raises(TuneforgeError, match="rank 1 waited 1 s for the main process .* to finish converting model.gguf"):
        with dist.main_process_first("converting model.gguf", ready=lambda: False, timeout_s=1):
            ran.append(True)
    assert not ran


def test_artifacts_are_written_by_the_main_process_only(as_rank, tmp_path):
    from tuneforge.train import artifacts

    as_rank(1)
    artifacts.save_results(str(tmp_path), {"train_loss": 1.0})
    assert os.listdir(tmp_path) == []
    as_rank(0)
    path = artifacts.save_results(str(tmp_path), {"train_loss": 1.0})
    assert json.load(open(path)) == {"train_loss": 1.0} and os.listdir(tmp_path) == [os.path.basename(path)]


def test_data_cache_is_written_by_the_main_process_only(as_rank, monkeypatch, tmp_path):
    from datasets import Dataset, DatasetDict

    from tuneforge.data import cache

    monkeypatch.setattr(dist, "WAIT_TIMEOUT_S", 1)
    dsd = DatasetDict({"train": Dataset.from_dict({"input_ids": [[1, 2, 3]]})})
    as_rank(1)
    with pytest.raises(TuneforgeError, match="writing the tokenized data cache"):  # waits for rank 0, which never writes
        cache.save(str(tmp_path), "k1", dsd, {"n": 1})
    assert not os.path.exists(tmp_path / "tokenized" / "k1")
    as_rank(0)
    cache.save(str(tmp_path), "k1", dsd, {"n": 1})
    as_rank(1)  # now ready: the other ranks pass at once and leave rank 0's copy as it is
    cache.save(str(tmp_path), "k1", dsd, {"n": 2})
    data, stats = cache.load(str(tmp_path), "k1")
    assert stats == {"n": 1} and data["train"]["input_ids"] == [[1, 2, 3]]
    assert sorted(os.listdir(tmp_path / "tokenized")) == ["k1"]


def test_data_cache_overwrite_replaces_an_existing_entry(tmp_path, monkeypatch):
    from datasets import Dataset, DatasetDict

    from tuneforge.data import cache

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dsd = DatasetDict({"train": Dataset.from_dict({"input_ids": [[1, 2, 3]]})})
    cache.save(str(tmp_path), "k1", dsd, {"n": 1})
    cache.save(str(tmp_path), "k1", dsd, {"n": 2})  # existed before we started: overwrite_cache asked for a new copy
    assert cache.load(str(tmp_path), "k1")[1] == {"n": 2}
    assert sorted(os.listdir(tmp_path / "tokenized")) == ["k1"]


def test_pissa_folders_are_written_and_deleted_by_the_main_process_only(as_rank, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from tuneforge import config
    from tuneforge.methods import lora

    out = str(tmp_path / "run")
    cfg = config.load(None, {"model_name_or_path": tiny_model_dir, "output_dir": out, "dataset": "x", "pissa_init": True,
                             "lora_rank": 4, "pissa_iter": -1})
    ids = torch.tensor([[5, 9, 23, 77]])
    as_rank(1)
    torch.manual_seed(0)  # as load_model seeds before applying the method (fast SVD draws random vectors)
    other = lora.apply(AutoModelForCausalLM.from_pretrained(tiny_model_dir), cfg)
    assert not os.path.exists(os.path.join(out, lora.PISSA_INIT_DIR))
    assert lora.save(other, out, cfg) is True and not os.path.exists(out)
    as_rank(0)
    torch.manual_seed(0)
    main = lora.apply(AutoModelForCausalLM.from_pretrained(tiny_model_dir), cfg)
    assert os.path.isdir(os.path.join(out, lora.PISSA_INIT_DIR))
    with torch.no_grad():  # every rank built the same model
        assert torch.equal(main(input_ids=ids).logits, other(input_ids=ids).logits)
    assert lora.save(main, out, cfg) is True
    assert os.path.isfile(os.path.join(out, "adapter_config.json")) and not os.path.exists(os.path.join(out, lora.PISSA_INIT_DIR))


WORKER = textwrap.dedent("""
    import json, os, sys, time
    import torch.distributed as td
    td.init_process_group("gloo")
    from tuneforge import distributed as d
    from tuneforge.data import cache
    from datasets import Dataset, DatasetDict
    out = sys.argv[1]
    events = []
    with d.main_process_first("the shared step"):
        if d.is_main_process():
            time.sleep(1.0)
        events.append(["body", d.rank(), time.time()])
    root = os.path.join(out, "cache")
    hit = cache.load(root, "k")  # every rank gets rank 0's answer: a miss
    if hit is None:
        cache.save(root, "k", DatasetDict({"train": Dataset.from_dict({"x": [[d.rank()]]})}), {"by": d.rank()})
    hit = cache.load(root, "k")
    events.append(["cache", d.rank(), hit[1]["by"]])
    events.append(["world", d.rank(), d.world_size(), d.broadcast_from_main(d.rank())])
    json.dump(events, open(os.path.join(out, f"rank{d.rank()}.json"), "w"))
    td.destroy_process_group()
""")


def test_two_real_ranks_meet_at_the_barrier(tmp_path):
    """Two processes with an initialized (gloo) process group: rank 1's body starts after rank 0's ends, only rank 0
    writes the data cache, and both read it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = []
    for r in range(2):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out
    r0, r1 = (json.load(open(tmp_path / f"rank{r}.json")) for r in range(2))
    assert r1[0][2] >= r0[0][2]  # rank 1 ran the body after rank 0 had finished it
    assert r0[1] == ["cache", 0, 0] and r1[1] == ["cache", 1, 0]  # rank 0 wrote the cache, rank 1 read that copy
    assert r0[2] == ["world", 0, 2, 0] and r1[2] == ["world", 1, 2, 0]


# --- several processes: refusals, the stall watchdog, the sharded fallbacks (the launched runs: test_scale_launch.py)

def _cfg(**keys):
    from tuneforge import config

    return config.load(None, {"output_dir": "o", "dataset": "d", **keys})


@pytest.mark.parametrize("keys, world, key, words", [
    ({"finetuning_type": "lisa"}, 2, "finetuning_type", "lisa does not run on several processes"),
    ({"finetuning_type": "galore", "deepspeed": "examples/deepspeed/ds_z2_offload.json"}, 2, "deepspeed",
     "galore builds its own optimizer"),
    ({"finetuning_type": "galore", "galore_layerwise": True}, 2, "galore_layerwise", "refuses under DDP"),
    ({"fsdp": "no_shard", "fsdp_config": {"version": 1}}, 2, "fsdp", "which is DDP"),
    ({"fsdp": "full_shard", "quantization_bit": 4}, 2, "quantization_bit", "cannot shard a quantized base"),
    ({"fsdp": "full_shard", "pissa_init": True}, 2, "pissa_init", "pissa_init with fsdp"),
    ({"fsdp": "full_shard", "stage": "dpo"}, 2, "fsdp", "wired for stages sft and pt only"),
    ({"fsdp": "full_shard"}, 1, "fsdp", "this run has one; set nproc_per_node: 2"),
])
def test_combinations_that_cannot_work_are_refused_with_the_reason(keys, world, key, words, monkeypatch):
    from tuneforge.distributed import checks

    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository: examples/

    found = checks.problems(_cfg(**keys), world)
    assert any(k == key and words in m for k, m in found), found


def test_supported_combinations_pass():
    from tuneforge.distributed import checks

    assert checks.problems(_cfg(finetuning_type="lisa"), 1) == []
    assert checks.problems(_cfg(finetuning_type="galore"), 2) == []
    assert checks.problems(_cfg(), 8) == [] and checks.strategy(_cfg()) == "ddp"
    assert checks.problems(_cfg(fsdp="full_shard offload"), 2) == [] and checks.strategy(_cfg(fsdp="full_shard")) == "fsdp"


@pytest.mark.parametrize("args, expected", [
    ({"fsdp": "full_shard"}, (False, True, False)),
    ({"fsdp": True}, (False, True, False)),
    ({"fsdp": "shard_grad_op offload"}, (False, False, True)),
    ({"fsdp": ["hybrid_shard", "auto_wrap"]}, (True, True, False)),
    ({"fsdp": "hybrid_shard_zero2", "fsdp_config": {"cpu_offload": True}}, (True, False, True)),
    ({"fsdp": "full_shard", "fsdp_config": {"reshard_after_forward": False}}, (False, False, False)),
])
def test_fsdp_options_are_read_in_transformers_spelling(args, expected):
    from tuneforge.distributed import fsdp

    assert tuple(fsdp.options(args)) == expected


def test_launch_keys_are_checked():
    from tuneforge.config.errors import ConfigError

    with pytest.raises(ConfigError, match="node_rank must be in 0..1"):
        _cfg(nnodes=2, node_rank=2)
    with pytest.raises(ConfigError, match="nproc_per_node must be >= 1"):
        _cfg(nproc_per_node=0)


def test_the_watchdog_dumps_every_thread_and_names_the_cause(tmp_path, capfd):
    from tuneforge.distributed import watchdog

    exits = []
    dog = watchdog.StallWatchdog(0.3, str(tmp_path), rank=1, world=2, exit_fn=exits.append, poll_s=0.05)
    dog.on_train_begin(None, None, None)
    deadline = time.monotonic() + 10
    while not exits and time.monotonic() < deadline:
        time.sleep(0.05)  # the main thread "hangs" here
    assert exits == [watchdog.EXIT_CODE]
    dump = (tmp_path / "watchdog-rank1.txt").read_text()
    assert "rank 1: no training step finished for" in dump and "test_the_watchdog_dumps_every_thread" in dump
    assert "tuneforge-watchdog" in dump or "in _watch" in dump  # every thread, the watchdog's own too
    assert "error: rank 1: no training step" in capfd.readouterr().err


def test_the_watchdog_stays_quiet_while_steps_finish(tmp_path):
    from tuneforge.distributed import watchdog

    exits = []
    dog = watchdog.StallWatchdog(0.5, str(tmp_path), rank=0, world=2, exit_fn=exits.append, poll_s=0.05)
    dog.on_train_begin(None, None, None)
    for _ in range(15):
        time.sleep(0.1)
        dog.on_step_end(None, None, None)
    dog.on_train_end(None, None, None)
    assert exits == [] and not os.listdir(tmp_path)


def test_the_watchdog_runs_only_with_several_processes(as_rank):
    from tuneforge.distributed import watchdog

    cfg, off = _cfg(), _cfg(watchdog_timeout_s=0)
    as_rank(0, 1)
    assert watchdog.callbacks(cfg) == []
    as_rank(0, 2)
    assert [type(c).__name__ for c in watchdog.callbacks(cfg)] == ["StallWatchdog"]
    assert watchdog.callbacks(off) == []


def test_likely_cause_reads_the_main_threads_stack():
    import traceback

    from tuneforge.distributed.watchdog import likely_cause

    def frame(path, name="f"):
        return traceback.FrameSummary(path, 1, name)

    assert "collective" in likely_cause([frame("/x/train.py"), frame("/v/torch/distributed/distributed_c10d.py", "all_reduce")], 2)
    assert "data loader" in likely_cause([frame("/v/torch/utils/data/dataloader.py")], 2)
    assert "backward" in likely_cause([frame("/v/torch/autograd/__init__.py")], 2)


def test_sharded_weights_take_the_plain_fused_paths():
    import torch
    from torch import nn
    from transformers import LlamaConfig

    from tuneforge.distributed import is_sharded
    from tuneforge.train.loss import fused_head_ok

    head = nn.Linear(8, 16, bias=False)
    config = LlamaConfig()
    assert fused_head_ok(head, config) and not is_sharded(head.weight)
    head.weight.ds_id = 3  # a DeepSpeed ZeRO-3 parameter
    assert is_sharded(head.weight) and not fused_head_ok(head, config)
    flat = nn.Linear(8, 16, bias=False)
    flat.weight = nn.Parameter(torch.zeros(64))  # FSDP1 between forwards: this rank's flat shard
    assert not fused_head_ok(flat, config)


def test_the_fused_lora_forward_falls_back_for_sharded_weights():
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn

    from tuneforge.methods import lora_forward

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    model = get_peft_model(Net(), LoraConfig(r=2, target_modules=["proj"], init_lora_weights=False))
    assert lora_forward.fuse(model) == 1
    layer = model.base_model.model.proj
    x = torch.randn(3, 8)
    calls = []
    plain = type(layer).forward
    type(layer).forward = lambda self, *a, **k: calls.append(1) or plain(self, *a, **k)
    try:
        layer(x)
        assert calls == []  # the fused path
        layer.base_layer.weight.ds_id = 1
        layer(x)
        assert calls == [1]  # sharded: peft's own forward
    finally:
        type(layer).forward = plain


def test_deepspeed_runs_get_the_cpu_accelerator_and_a_cached_ops_folder(monkeypatch, tmp_path):
    from tuneforge.distributed import launch

    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = _cfg(deepspeed="examples/deepspeed/ds_z3_offload.json", cache_dir=str(tmp_path))
    env: dict = {}
    launch.deepspeed_environment(cfg, env)
    assert env == {"DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions")}
    env = {"TORCH_EXTENSIONS_DIR": "/mine"}
    launch.deepspeed_environment(cfg, env)
    assert env["TORCH_EXTENSIONS_DIR"] == "/mine"  # the user's wins
    env = {}
    launch.deepspeed_environment(_cfg(), env)
    assert env == {}


def test_the_launcher_ends_the_event_log_with_the_root_cause(tmp_path):
    from tuneforge.distributed import launch
    from tuneforge.run.events import EventLog, read_events, state

    out = str(tmp_path)
    log = EventLog(out, enabled=True)
    log.emit("started")
    launch.close_event_log(out, "rank 1 failed: boom")  # rank 0 was stopped before it could write its end
    now = state(read_events(out))
    assert now["state"] == "failed" and now["error"] == "rank 1 failed: boom"
    log.emit("started")
    log.failed(RuntimeError("Connection closed by peer"))
    launch.close_event_log(out, "rank 0 failed: its own error")  # rank 0's own failure is the root cause: kept
    assert state(read_events(out))["error"] == "Connection closed by peer"
    launch.close_event_log(out, "rank 1 failed: the cause", root_cause_elsewhere=True)
    assert state(read_events(out))["error"] == "rank 1 failed: the cause"
    log.emit("started")
    log.emit("finished", metrics={})
    launch.close_event_log(out, "late", root_cause_elsewhere=True)
    assert state(read_events(out))["state"] == "finished"
