"""Several processes on the CPU (gloo): `tuneforge train nproc_per_node=2` launches itself through
torch.distributed.run; two ranks with half the batch each train exactly like one process with the whole batch; only
rank 0 writes; a failing or stalled rank ends the whole job quickly with a readable message."""

import json
import os
import subprocess
import sys
import time

import pytest

TOLERANCE = 1e-4  # absolute, per-step loss: DDP averages the gradients in float32 (seen: equal to 6 digits)


def train_cmd(model_dir, data_dir, out, *extra):
    return [sys.executable, "-m", "tuneforge.cli", "train", f"model_name_or_path={model_dir}", "dataset=my_alpaca",
            f"dataset_dir={data_dir}", f"output_dir={out}", "template=chatml", "cutoff_len=64", "max_steps=4",
            "logging_steps=1", "learning_rate=1e-2", "save_strategy=no", "lora_rank=4", "disable_tqdm=true",
            f"cache_dir={os.path.join(str(out), '..', 'cache')}", "allocator=system", *extra]


def run(cmd, timeout=240, **env):
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


def losses(out) -> list[float]:
    with open(os.path.join(out, "trainer_log.jsonl")) as fh:
        return [r["loss"] for r in map(json.loads, fh) if "loss" in r]


def test_two_processes_train_like_one_with_the_same_global_batch_and_write_once(tiny_model_dir, data_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    rc, log1, _ = run(train_cmd(tiny_model_dir, data_dir, one, "per_device_train_batch_size=4"))
    assert rc == 0, log1[-3000:]
    rc, log2, _ = run(train_cmd(tiny_model_dir, data_dir, two, "per_device_train_batch_size=2", "nproc_per_node=2"))
    assert rc == 0, log2[-3000:]
    assert "launching 2 processes" in log2 and "[INFO|rank1|" in log2 and "[INFO|rank0|" in log2
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 4
    assert max(abs(x - y) for x, y in zip(a, b)) < TOLERANCE, (a, b)
    # written once: one started/finished pair, one line per step, one adapter
    events = [json.loads(line) for line in open(two / "events.jsonl")]
    kinds = [e["event"] for e in events]
    assert kinds.count("started") == 1 and kinds.count("finished") == 1 and kinds[-1] == "finished"
    assert [e["step"] for e in events if e["event"] == "step" and "loss" in e] == [1, 2, 3, 4]
    assert os.path.isfile(two / "adapter_model.safetensors") and log2.count("done: train_loss=") == 1
    results = json.load(open(two / "all_results.json"))
    assert results["train_tokens"] == json.load(open(one / "all_results.json"))["train_tokens"]  # both ranks' tokens


def test_a_failing_rank_ends_the_job_with_its_error_in_under_a_minute(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    cmd = train_cmd(tiny_model_dir, data_dir, out, "per_device_train_batch_size=2", "nproc_per_node=2")
    rc, log, wall = run(cmd, timeout=120, TUNEFORGE_DEBUG_FAIL="1@2")
    assert rc != 0 and wall < 60, (rc, wall)
    last = log.strip().splitlines()
    assert any(line.startswith("error: rank 1 failed: TUNEFORGE_DEBUG_FAIL: rank 1 fails at step 2") for line in last)
    final = [json.loads(line) for line in open(out / "events.jsonl")][-1]
    assert final["event"] == "failed" and "rank 1 failed" in final["error"]  # the root cause, not rank 0's lost peer


def test_a_stalled_rank_makes_every_rank_dump_its_stacks_and_end_the_job(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    cmd = train_cmd(tiny_model_dir, data_dir, out, "per_device_train_batch_size=2", "nproc_per_node=2",
                    "watchdog_timeout_s=4")
    rc, log, wall = run(cmd, timeout=120, TUNEFORGE_DEBUG_STALL="1@2")
    assert rc != 0 and wall < 60, (rc, wall, log[-3000:])
    stalled, waiting = (open(out / f"watchdog-rank{r}.txt").read() for r in (1, 0))
    assert "TUNEFORGE_DEBUG_STALL made this rank stall on purpose" in stalled and 'in inject' in stalled
    assert "waits in a collective operation" in waiting and "torch/nn/parallel/distributed.py" in waiting
    assert "no training step finished for" in log and "watchdog_timeout_s" in log


def test_refused_combinations_stop_before_any_process_starts(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    rc, log, wall = run(train_cmd(tiny_model_dir, data_dir, out, "nproc_per_node=2", "finetuning_type=lisa",
                                  "lisa_layers=1"), timeout=120)
    assert rc == 2 and "finetuning_type lisa does not run on several processes" in log
    assert "launching" not in log and not os.path.exists(out / "events.jsonl")


@pytest.mark.parametrize("argv, expected", [
    (["cfg.yaml", "x=1"], ["--nproc_per_node=4", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1",
                           "--master_port=29501", "-m", "tuneforge.cli", "train", "cfg.yaml", "x=1"]),
])
def test_the_launch_command_is_an_argument_list_through_torch_distributed_run(argv, expected):
    from tuneforge import config
    from tuneforge.distributed import launch

    cfg = config.load(None, {"output_dir": "o", "dataset": "d", "nproc_per_node": 4, "nnodes": 2, "node_rank": 1,
                             "master_addr": "10.0.0.1", "master_port": 29501})
    cmd = launch.command(cfg, argv, cfg.method.master_port)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and cmd[3:] == expected
    assert launch.planned_world_size(cfg, env={}) == 8
    assert launch.planned_world_size(cfg, env={"LOCAL_RANK": "0", "WORLD_SIZE": "3", "RANK": "0"}) == 3
    assert not launch.under_launcher({}) and launch.under_launcher({"LOCAL_RANK": "1"})
