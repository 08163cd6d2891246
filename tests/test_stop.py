"""A clean stop on SIGTERM: the next step end saves a checkpoint and stops training, training's end raises RunStopped,
the event log records `stopped` (not `failed`, not `finished`), and `tuneforge` exits with its own code."""

import os
import signal
import threading
from types import SimpleNamespace

import pytest

from tuneforge import cli
from tuneforge.run import EventLog, follow, read_events, state
from tuneforge.train import stop
from tuneforge.train.stop import EXIT_CODE, RunStopped, SignalStop


def trainer_objects(tmp_path, step=7):
    args = SimpleNamespace(output_dir=str(tmp_path), device="cpu")
    return args, SimpleNamespace(global_step=step), SimpleNamespace(should_save=False, should_training_stop=False)


def test_sigterm_saves_a_checkpoint_at_the_step_end_then_raises_run_stopped(tmp_path):
    args, st, control = trainer_objects(tmp_path)
    cb, before = SignalStop(), signal.getsignal(signal.SIGTERM)
    cb.on_train_begin(args, st, control)
    cb.on_step_end(args, st, control)
    assert not control.should_save and not control.should_training_stop  # no stop asked for yet
    os.kill(os.getpid(), signal.SIGTERM)  # handled by the callback: this process lives on
    cb.on_step_end(args, st, control)
    assert control.should_save and control.should_training_stop
    cb.on_save(args, st, control)
    with pytest.raises(RunStopped) as e:
        cb.on_train_end(args, st, control)
    assert e.value.stopped_fields["step"] == 7
    assert e.value.stopped_fields["checkpoint"] == os.path.join(str(tmp_path), "checkpoint-7")
    assert "resume_from_checkpoint: auto" in str(e.value)
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_a_run_that_was_not_asked_to_stop_ends_normally_and_restores_the_handler(tmp_path):
    args, st, control = trainer_objects(tmp_path)
    cb, before = SignalStop(), signal.getsignal(signal.SIGTERM)
    cb.on_train_begin(args, st, control)
    assert signal.getsignal(signal.SIGTERM) == cb.request
    cb.on_step_end(args, st, control)
    cb.on_train_end(args, st, control)  # no exception
    assert signal.getsignal(signal.SIGTERM) is before and not control.should_training_stop


def test_no_handler_is_installed_outside_the_main_thread(tmp_path):
    args, st, control = trainer_objects(tmp_path)
    cb, before = SignalStop(), signal.getsignal(signal.SIGTERM)
    worker = threading.Thread(target=cb.on_train_begin, args=(args, st, control))
    worker.start()
    worker.join()
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_event_log_records_a_stop_as_stopped_and_follow_ends_there(tmp_path):
    log = EventLog(str(tmp_path), enabled=True)
    log.emit("started", pid=1)
    record = log.failed(RunStopped(3, str(tmp_path / "checkpoint-3")))
    assert record["event"] == "stopped" and record["step"] == 3
    events = read_events(str(tmp_path))
    assert [e["event"] for e in events] == ["started", "stopped"]
    now = state(events)
    assert now["state"] == "stopped" and now["checkpoint"].endswith("checkpoint-3") and "error" not in now
    assert [e["event"] for e in follow(str(tmp_path), wait=True, timeout_s=5)][-1] == "stopped"


def test_the_cli_exits_with_the_stop_code_and_no_error_prefix(monkeypatch, capsys):
    def stopped(args):
        raise RunStopped(5, "/runs/a/checkpoint-5")

    monkeypatch.setitem(cli.COMMANDS, "version", stopped)
    assert cli.main(["version"]) == EXIT_CODE == 143
    err = capsys.readouterr().err
    assert err.startswith("stopped at step 5") and "error:" not in err


def test_the_callback_is_a_trainer_callback_added_to_every_run():
    from transformers import TrainerCallback

    from tuneforge.run.hooks import run_callbacks

    made = stop.callback()
    assert isinstance(made, TrainerCallback) and isinstance(made, SignalStop)
    callbacks = run_callbacks(SimpleNamespace(method=SimpleNamespace(watchdog_timeout_s=0)), None)  # one process
    assert sum(isinstance(c, SignalStop) for c in callbacks) == 1
