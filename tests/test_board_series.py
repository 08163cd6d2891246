"""Plot data from a run folder: curves from the event log and the trainer log, a resumed run's redone steps
replacing the first attempt's, and the config diff of two runs."""

import json

from tuneforge.board.series import config_diff, series


def write_lines(path, records, partial=None):
    with open(path, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
        if partial:
            fh.write(partial)


def step(n, **kw):
    return {"event": "step", "time": 0, "run": "r", "step": n, "total": 10, "tokens_per_second": 100.0 + n, **kw}


def test_curves_come_from_the_event_log_and_the_trainer_log(tmp_path):
    write_lines(tmp_path / "events.jsonl", [
        {"event": "started", "time": 0, "run": "r"},
        step(1, loss=2.0, learning_rate=1e-3, grad_norm=0.5), step(2), step(2, loss=1.5, learning_rate=9e-4, grad_norm=0.4),
    ], partial='{"event": "step", "step": 3, "lo')  # a line still being written is left for later
    write_lines(tmp_path / "trainer_log.jsonl", [
        {"step": 1, "max_steps": 10, "epoch": 0.1, "elapsed_s": 1.0, "loss": 2.0, "learning_rate": 1e-3, "rewards/margins": 0.1},
        {"step": 2, "max_steps": 10, "epoch": 0.2, "elapsed_s": 2.0, "eval_loss": 1.7, "eval_runtime": 0.3,
         "eval_samples_per_second": 9.0},
        {"step": 2, "train_runtime": 3.0, "train_loss": 1.7, "total_flos": 5},
    ])
    curves = series(str(tmp_path))
    assert curves["loss"] == [(1, 2.0), (2, 1.5)]
    assert curves["learning_rate"] == [(1, 1e-3), (2, 9e-4)]
    assert curves["grad_norm"] == [(1, 0.5), (2, 0.4)]
    assert curves["tokens_per_second"] == [(1, 101.0), (2, 102.0)]
    assert curves["eval_loss"] == [(2, 1.7)] and curves["rewards/margins"] == [(1, 0.1)]
    assert not {"eval_runtime", "eval_samples_per_second", "train_loss", "total_flos", "epoch", "elapsed_s"} & set(curves)


def test_a_resumed_run_shows_the_steps_as_they_finally_went(tmp_path):
    write_lines(tmp_path / "events.jsonl", [
        {"event": "started", "time": 0, "run": "a"}, *(step(n, loss=float(n)) for n in (1, 2, 3, 4)),
        {"event": "stopped", "time": 0, "run": "a", "step": 4, "checkpoint": "x"},
        {"event": "started", "time": 0, "run": "b"}, *(step(n, loss=10.0 + n) for n in (3, 4, 5)),
    ])
    assert series(str(tmp_path))["loss"] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0)]


def test_an_empty_folder_has_the_main_curves_empty():
    assert series("/nonexistent/run") == {"loss": [], "eval_loss": [], "learning_rate": [], "tokens_per_second": []}


def test_config_diff_lists_the_keys_that_differ_with_both_values():
    a = {"learning_rate": 1e-4, "lora_rank": 8, "dataset": "x", "output_dir": "a"}
    b = {"learning_rate": 0.0001, "lora_rank": 16, "dataset": "x", "output_dir": "b", "max_steps": 10}
    assert config_diff(a, b) == [("lora_rank", 8, 16), ("max_steps", None, 10), ("output_dir", "a", "b")]
    assert config_diff(a, a) == []
