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
