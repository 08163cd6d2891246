"""Crash safety end to end: `tuneforge train` is SIGKILLed between checkpoints, resumed with
`resume_from_checkpoint: auto`, SIGKILLed again in the middle of a checkpoint save, resumed again, and ends with the
same per-step losses and final weights as an uninterrupted run. fp32 on the CPU, LoRA with dropout (so the RNG state
matters), three epochs, resumed mid-epoch in epoch 2. Tolerance: equal to 1e-6 relative (observed: bit-equal)."""

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.train.checkpoints import MANIFEST, PAUSE_ENV

EPOCHS, STEPS_PER_EPOCH = 3, 6  # 24 rows, batch 4


def train_cmd(model_dir, data_dir, out, *extra):
    return [sys.executable, "-m", "tuneforge.cli", "train", f"model_name_or_path={model_dir}", "dataset=my_alpaca,my_chat",
            f"dataset_dir={data_dir}", f"output_dir={out}", "template=chatml", "cutoff_len=64", "per_device_train_batch_size=4",
            f"num_train_epochs={EPOCHS}", "logging_steps=1", "learning_rate=1e-2", "save_strategy=steps", "save_steps=4",
            "save_total_limit=2", "lora_rank=4", "lora_dropout=0.1", "disable_tqdm=true", "allocator=system",
            f"cache_dir={os.path.join(str(out), '..', 'cache')}", *extra]


def env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def run_to_end(cmd):
    """In this process (the killed runs are other processes; this saves a Python start per run)."""
    from tuneforge.cli import main

    assert main(cmd[3:]) == 0


def kill_when_paused(cmd, pause: str) -> str:
    """Start `cmd` with the save path's fault hook set to `pause`, SIGKILL it once it says it is paused there."""
    proc = subprocess.Popen(cmd, env=env(**{PAUSE_ENV: pause}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    guard = threading.Timer(240, proc.kill)
    guard.start()
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if f"{PAUSE_ENV}: pausing" in line:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        guard.cancel()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-40:])
    return "".join(seen)


def losses_by_attempt(out) -> list[dict]:
    """trainer_log.jsonl is appended by each attempt; a step lower than the one before starts a new attempt."""
    attempts, last = [], None
    with open(os.path.join(out, "trainer_log.jsonl")) as fh:
        for rec in map(json.loads, fh):
            if "loss" not in rec:
                continue
            if last is None or rec["step"] <= last:
                attempts.append({})
            attempts[-1][rec["step"]] = rec["loss"]
            last = rec["step"]
    return attempts


def test_sigkill_mid_run_and_mid_save_then_auto_resume_equals_the_uninterrupted_run(tiny_model_dir, data_dir, tmp_path):
    total = EPOCHS * STEPS_PER_EPOCH
    ref, out = str(tmp_path / "ref"), str(tmp_path / "run")
    run_to_end(train_cmd(tiny_model_dir, data_dir, ref))
    [reference] = losses_by_attempt(ref)
    assert sorted(reference) == list(range(1, total + 1))

    # 1. killed between checkpoints: after step 10, before it is logged (checkpoint-8 is the newest; 9 and 10 are lost)
    kill_when_paused(train_cmd(tiny_model_dir, data_dir, out), "step:10:120")
    assert sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")) == ["checkpoint-4", "checkpoint-8"]

    # 2. resumed from checkpoint-8 (epoch 2, mid-epoch), killed while writing checkpoint-12: model written, optimizer not
    log = kill_when_paused(train_cmd(tiny_model_dir, data_dir, out, "resume_from_checkpoint=auto"), "save:12:120")
    assert "checkpoint-8" in log
    staging = os.path.join(out, ".tmp-checkpoint-12", "checkpoint-12")
    assert os.path.isdir(staging) and not os.path.exists(os.path.join(staging, "optimizer.pt"))
    assert not os.path.exists(os.path.join(out, "checkpoint-12"))  # nothing that looks like a checkpoint

    # 3. resumed again: auto skips the half-written save, continues from checkpoint-8 and cleans the leftover
    run_to_end(train_cmd(tiny_model_dir, data_dir, out, "resume_from_checkpoint=auto"))
    attempts = losses_by_attempt(out)
    assert [min(a) for a in attempts] == [1, 9, 9]
    final = attempts[-1]
    assert sorted(final) == list(range(9, total + 1))
    assert [final[s] for s in sorted(final)] == pytest.approx([reference[s] for s in sorted(final)], rel=1e-6, abs=0)
    assert [attempts[0][s] for s in range(1, 10)] == pytest.approx([reference[s] for s in range(1, 10)], rel=1e-6, abs=0)

    a, b = load_file(os.path.join(ref, "adapter_model.safetensors")), load_file(os.path.join(out, "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=0, msg=name)
    assert not any(d.startswith(".tmp-") for d in os.listdir(out))
    kept = sorted(d for d in os.listdir(out) if d.startswith("checkpoint-"))
    assert kept == ["checkpoint-16", "checkpoint-18"]  # save_total_limit 2, the newest kept
    assert all(os.path.isfile(os.path.join(out, d, MANIFEST)) for d in kept)
