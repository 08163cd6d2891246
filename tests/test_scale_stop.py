"""The Board stops a 2-process run cleanly: SIGTERM to the run's process group reaches every rank once (through
torch.distributed.run), the ranks agree on the step (an all_reduce of the stop flag), write one checkpoint and one
`stopped` event, and the job exits 143 without hanging; `resume_from_checkpoint: auto` then finishes it."""

import json
import os
import re
import subprocess
import sys
import time

from tuneforge import config
from tuneforge.board.jobs import Runs
from tuneforge.run import read_events
from conftest import wait_for


def test_the_board_stops_a_two_process_run_at_one_step_with_one_checkpoint_and_it_resumes(tiny_model_dir, data_dir,
                                                                                          tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TUNEFORGE_TEST_PAUSE", "step:2:4")  # both ranks rest after step 2: the stop lands mid-run
    out = tmp_path / "run"
    cfg = {"model_name_or_path": tiny_model_dir, "dataset": "my_alpaca", "dataset_dir": data_dir, "output_dir": str(out),
           "template": "chatml", "cutoff_len": 64, "per_device_train_batch_size": 1, "max_steps": 12, "save_steps": 1000,
           "logging_steps": 1, "learning_rate": 1e-3, "lora_rank": 4, "disable_tqdm": True, "allocator": "system",
           "cache_dir": str(tmp_path / "cache"), "nproc_per_node": 2}
    runs = Runs(str(tmp_path / "runs"))
    job = runs.start(cfg)
    wait_for(lambda: (j := runs.get(job.id)).status != "running" or (j.step or 0) >= 2, timeout=180)
    t0 = time.monotonic()
    stopped = runs.stop(job.id, grace_s=60)
    took = time.monotonic() - t0
    console = runs.log_tail(job.id, lines=400)
    assert stopped.status == "stopped" and stopped.exit_code == 143, console
    assert took < 30, took  # no hang: the step, the checkpoint and the exit
    events = read_events(str(out))
    assert [e["event"] for e in events].count("stopped") == 1 and events[-1]["event"] == "stopped"
    step = events[-1]["step"]
    # every rank stopped at the same step, and only that step's checkpoint exists
    ranks_stopped = re.findall(r"stopped at step (\d+)", console)
    assert ranks_stopped and set(map(int, ranks_stopped)) == {step}, console
    told = re.findall(r"\|rank(\d)\|tuneforge\.train\.stop\] stop asked for \(signal 15\)", console)
    assert sorted(told) == ["0", "1"], console  # each rank got exactly one SIGTERM (from torchrun)
    assert sorted(p for p in os.listdir(out) if p.startswith("checkpoint-")) == [f"checkpoint-{step}"]
    assert not os.path.exists(out / "all_results.json")
    # resume: the remaining steps under the same 2 processes
    monkeypatch.delenv("TUNEFORGE_TEST_PAUSE")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", job.config_path, "resume_from_checkpoint=auto"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert config.load(job.config_path).method.nproc_per_node == 2
    logged = [json.loads(line)["step"] for line in open(out / "trainer_log.jsonl") if '"loss"' in line]
    assert logged[-1] == 12 and logged.count(step + 1) == 1 and os.path.isfile(out / "all_results.json")
