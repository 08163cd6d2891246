"""The Board's run launcher: runs are detached processes with their own folder and event log; start, queue or refuse,
stop (the whole process group), reattach from a new Runs object, a crash reported with its error; and one real
`tuneforge train` stopped mid-run that leaves a checkpoint `resume_from_checkpoint: auto` finds."""

import json
import os
import sys
import time

import pytest

from tuneforge import TuneforgeError, config
from tuneforge.board import jobs as board_jobs, process
from tuneforge.board.jobs import Runs
from tuneforge.config.errors import ConfigError
from tuneforge.run import read_events
from conftest import wait_for

# A stand-in for `tuneforge train CONFIG`: writes events like a run, one step every STEP_S seconds, keeps a helper
# process in its group, and on SIGTERM ends its step and records `stopped` (mode `deaf` ignores SIGTERM, `crash` dies).
FAKE_TRAIN = r'''
import json, os, signal, subprocess, sys, time
import yaml

mode, path = sys.argv[1], sys.argv[2]
cfg = yaml.safe_load(open(path))
out = cfg["output_dir"]
os.makedirs(out, exist_ok=True)

def emit(event, **fields):
    with open(os.path.join(out, "events.jsonl"), "a") as fh:
        fh.write(json.dumps({"event": event, "time": time.time(), "run": "fake", **fields}) + "\n")

stop = []
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "deaf" else lambda *a: stop.append(1))
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open(os.path.join(out, "helper.pid"), "w") as fh:
    fh.write(str(helper.pid))
emit("started", pid=os.getpid())
emit("phase", phase="training")
print("training", flush=True)
if mode == "crash":
    helper.kill()
    print("Traceback (most recent call last):\n  File x\nRuntimeError: fake device fault", flush=True)
    print("some cleanup noise", flush=True)
    sys.exit(1)
total = int(cfg.get("max_steps", 3))
for step in range(1, total + 1):
    time.sleep(0.05)
    emit("step", step=step, total=total, loss=1.0 / step, learning_rate=1e-3, tokens_per_second=100.0, eta_s=0.05 * (total - step))
    if stop:
        emit("stopped", step=step, checkpoint=None, message="stopped")
        helper.kill()
        sys.exit(143)
helper.kill()
emit("finished", metrics={"train_loss": 0.5})
'''


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    return lambda mode="ok": [sys.executable, str(script), mode]


def run_config(tmp_path, name, steps=3, **extra):
    return {"model_name_or_path": "tiny-model", "dataset": "my_alpaca", "output_dir": str(tmp_path / "out" / name),
            "max_steps": steps, **extra}


def group_alive(pgid: int) -> bool:
    return process.group_alive(board_jobs.Job(id="x", output_dir="", config_path="", status="running", created=0,
                                                  started=0, pid=pgid, config={}))


def test_a_started_run_is_a_detached_process_that_finishes_with_its_folder_written(tmp_path, fake):
    runs = Runs(str(tmp_path / "runs"), command=fake())
    job = runs.start(run_config(tmp_path, "a"))
    assert job.status == "running" and job.pid and job.started
    folder = os.path.dirname(job.config_path)
    saved = json.load(open(os.path.join(folder, "job.json")))
    assert saved["pid"] == job.pid and saved["proc_start"] and saved["status"] == "running"
    assert os.getsid(job.pid) == job.pid  # its own session: a closed Board does not end it
    done = wait_for(lambda: (j := runs.get(job.id)).status == "finished" and j.exit_code is not None and j)
    assert done.step == done.total == 3 and done.error is None and done.exit_code == 0
    assert config.load(job.config_path).output.output_dir == job.output_dir  # `tuneforge train config.yaml` reads it
    assert "training" in runs.log_tail(job.id)
    assert [j.id for j in runs.list()] == [job.id]


def test_a_second_run_is_queued_and_starts_on_poll_once_the_first_ends(tmp_path, fake):
    runs = Runs(str(tmp_path / "runs"), command=fake())
    first = runs.start(run_config(tmp_path, "a", steps=10))
    second = runs.start(run_config(tmp_path, "b"))
    assert second.status == "queued" and second.pid is None
    assert [j.id for j in runs.list()] == [second.id, first.id]  # newest first
    wait_for(lambda: runs.get(first.id).status == "finished")
    runs.poll()
    assert runs.get(second.id).status in ("running", "finished")
    assert wait_for(lambda: runs.get(second.id).status == "finished")


def test_the_refuse_policy_names_the_active_run_and_writes_nothing(tmp_path, fake):
    runs = Runs(str(tmp_path / "runs"), policy="refuse", command=fake())
    first = runs.start(run_config(tmp_path, "a", steps=400))
    with pytest.raises(TuneforgeError, match=f"run {first.id} is running"):
        runs.start(run_config(tmp_path, "b"))
    assert len(runs.list()) == 1
    runs.stop(first.id, grace_s=10)


def test_a_config_problem_is_raised_with_its_key_and_no_job_is_left(tmp_path, fake):
    runs = Runs(str(tmp_path / "runs"), command=fake())
    with pytest.raises(ConfigError) as e:
        runs.start(run_config(tmp_path, "a", lora_rnak=4))
    assert e.value.problems[0].key == "lora_rnak"
    assert runs.list() == [] and [n for n in os.listdir(runs.root) if not n.startswith(".")] == []


def test_two_active_runs_may_not_share_an_output_dir(tmp_path, fake):
    runs = Runs(str(tmp_path / "runs"), command=fake())
    first = runs.start(run_config(tmp_path, "a", steps=400))
    with pytest.raises(ConfigError) as e:
        runs.start(run_config(tmp_path, "a"))
    assert e.value.problems[0].key == "output_dir" and first.id in str(e.value)
    runs.stop(first.id, grace_s=10)


def test_stop_ends_the_whole_process_group_and_the_run_is_stopped(tmp_path, fake):
    runs = Runs(str(tmp_path / "runs"), command=fake())
    job = runs.start(run_config(tmp_path, "a", steps=400))
    wait_for(lambda: (runs.get(job.id).step or 0) >= 2)
    helper = int(open(os.path.join(job.output_dir, "helper.pid")).read())
    stopped = runs.stop(job.id, grace_s=10)
    assert stopped.status == "stopped" and stopped.exit_code == 143 and stopped.phase is None
    assert not group_alive(job.pid) and not os.path.exists(f"/proc/{helper}")
    assert read_events(job.output_dir)[-1]["event"] == "stopped"


def test_a_run_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path, fake):
    runs = Runs(str(tmp_path / "runs"), command=fake("deaf"))
    job = runs.start(run_config(tmp_path, "a", steps=400))
    wait_for(lambda: runs.get(job.id).step)
    t = time.time()
    stopped = runs.stop(job.id, grace_s=0.5)
    assert stopped.status == "stopped" and stopped.exit_code == -9 and time.time() - t < 8
    assert not group_alive(job.pid)
    last = read_events(job.output_dir)[-1]  # the Board ends the log the killed run could not
    assert last["event"] == "stopped" and "killed by SIGKILL" in last["message"]


def test_stop_without_waiting_returns_at_once_and_poll_kills_a_deaf_run_after_the_grace_period(tmp_path, fake):
    runs = Runs(str(tmp_path / "runs"), command=fake("deaf"))
    job = runs.start(run_config(tmp_path, "a", steps=400))
    wait_for(lambda: runs.get(job.id).step)
    t = time.time()
    asked = runs.stop(job.id, grace_s=0.5, wait=False)
    assert asked.status == "running" and asked.phase == "stopping" and time.time() - t < 2
    time.sleep(0.6)
    stopped = wait_for(lambda: (runs.poll(), (j := runs.get(job.id)).status == "stopped" and j)[1])
    assert stopped.exit_code == -9 and not group_alive(job.pid)


def test_a_queued_run_can_be_stopped_before_it_starts(tmp_path, fake):
    runs = Runs(str(tmp_path / "runs"), command=fake())
    first = runs.start(run_config(tmp_path, "a", steps=400))
    second = runs.start(run_config(tmp_path, "b"))
    assert runs.stop(second.id).status == "stopped"
    runs.stop(first.id, grace_s=10)
    runs.poll()
    assert runs.get(second.id).pid is None  # never started


def test_a_new_board_reattaches_to_a_running_job_and_can_stop_it(tmp_path, fake):
    root = str(tmp_path / "runs")
    job = Runs(root, command=fake()).start(run_config(tmp_path, "a", steps=400))
    again = Runs(root, command=fake())  # a restarted Board: nothing in memory
    seen = wait_for(lambda: (j := again.list()[0]).step and j)
    assert seen.id == job.id and seen.status == "running" and seen.total == 400 and seen.phase == "training"
    assert again.stop(job.id, grace_s=10).status == "stopped"
    assert Runs(root).get(job.id).status == "stopped"


def test_a_crashed_run_is_failed_with_its_last_error_line(tmp_path, fake):
    runs = Runs(str(tmp_path / "runs"), command=fake("crash"))
    job = runs.start(run_config(tmp_path, "a"))
    failed = wait_for(lambda: (j := runs.get(job.id)).status != "running" and j)
    assert failed.status == "failed"
    assert failed.error == "RuntimeError: fake device fault (exit code 1)"
    last = read_events(job.output_dir)[-1]
    assert last["event"] == "failed" and last["error"] == failed.error
    assert Runs(runs.root).get(job.id).error == failed.error  # kept for a later Board, which has no exit code


def test_a_pid_reused_by_another_process_is_not_taken_for_the_run(tmp_path, fake):
    runs = Runs(str(tmp_path / "runs"), command=fake())
    job = runs.start(run_config(tmp_path, "a"))
    wait_for(lambda: runs.get(job.id).status == "finished")
    path = os.path.join(os.path.dirname(job.config_path), "job.json")
    for change in ({"proc_start": "1"}, {"boot_id": "another-boot"}):
        data = json.load(open(path))
        data.update({"status": "running", "pid": os.getpid(), "proc_start": process.process_start(os.getpid()),
                     "exit_code": None, **change})  # this test process is alive, but it is not the run
        json.dump(data, open(path, "w"))
        os.remove(os.path.join(job.output_dir, "events.jsonl"))
        open(os.path.join(job.output_dir, "events.jsonl"), "w").close()
        assert Runs(runs.root).get(job.id).status == "failed"


def test_a_real_run_stopped_mid_way_leaves_a_checkpoint_that_auto_resumes(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    cfg = {"model_name_or_path": tiny_model_dir, "dataset": "my_alpaca", "dataset_dir": data_dir, "output_dir": str(out),
           "template": "chatml", "cutoff_len": 64, "per_device_train_batch_size": 2, "max_steps": 5000, "save_steps": 100000,
           "logging_steps": 1, "learning_rate": 1e-3, "lora_rank": 4, "disable_tqdm": True, "allocator": "system",
           "cache_dir": str(tmp_path / "cache")}
    runs = Runs(str(tmp_path / "runs"))
    job = runs.start(cfg)
    wait_for(lambda: (j := runs.get(job.id)).status != "running" or (j.step or 0) >= 2, timeout=180, every=0.2)
    stopped = runs.stop(job.id, grace_s=60)
    assert stopped.status == "stopped", runs.log_tail(job.id)
    events = read_events(str(out))
    assert events[-1]["event"] == "stopped" and stopped.exit_code == 143
    checkpoint = events[-1]["checkpoint"]
    assert checkpoint == stopped.checkpoint and os.path.isfile(os.path.join(checkpoint, "trainer_state.json"))
    assert events[-1]["step"] >= 2 and checkpoint.endswith(f"checkpoint-{events[-1]['step']}")
    assert not os.path.exists(out / "all_results.json") and not os.path.exists(out / "adapter_model.safetensors")
    assert "stopped at step" in runs.log_tail(job.id)
    resumed = config.resolve(config.load(job.config_path, ["resume_from_checkpoint=auto"]), quiet=True)
    assert resumed.output.resume_from_checkpoint == checkpoint
