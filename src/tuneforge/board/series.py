"""Plot data from a run folder, for the Board's monitor and its comparison of two runs: `series()` reads the run's
event log and trainer log into (step, value) curves; `config_diff()` lists the keys two run configs differ in."""

import json
import math
import os

from tuneforge.run.events import EVENTS_FILE

TRAINER_LOG = "trainer_log.jsonl"  # train/callbacks.py JsonlLogger (not imported: it pulls in transformers)
MAIN = ("loss", "eval_loss", "learning_rate", "tokens_per_second")
FROM_EVENTS = ("loss", "learning_rate", "tokens_per_second", "grad_norm")
# trainer-log fields that are bookkeeping or end-of-run summaries, not curves
NOT_CURVES = {"step", "max_steps", "epoch", "elapsed_s", "num_input_tokens_seen", "total_flos", "train_loss"}


def series(output_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Curves of a run as {name: [(step, value), ...]}, steps ascending.

    Always has loss, eval_loss, learning_rate and tokens_per_second (maybe empty lists); also grad_norm and whatever
    else the stage logs (DPO's rewards/margins, rewards/chosen, ...; eval_* metrics; GRPO's reward; ...). Step records
    of events.jsonl give loss, learning_rate, grad_norm and tokens_per_second; trainer_log.jsonl gives the rest.
    A resumed run redoes the steps after its checkpoint: a point replaces every point of the same curve at its step
    or later, so each curve shows the run as it finally went.
    """
    curves: dict[str, list[tuple[int, float]]] = {name: [] for name in MAIN}
    for record in _records(os.path.join(output_dir, EVENTS_FILE)):
        if record.get("event") == "step" and isinstance(record.get("step"), int):
            for name in FROM_EVENTS:
                _add(curves, name, record["step"], record.get(name))
    from_events = {name for name in FROM_EVENTS if curves.get(name)}
    for record in _records(os.path.join(output_dir, TRAINER_LOG)):
        step = record.get("step")
        if not isinstance(step, int) or any(k.startswith("train_") for k in record):  # the end-of-training summary
            continue
        for name, value in record.items():
            if name in NOT_CURVES or name in from_events or name.endswith(("_runtime", "_per_second")):
                continue
            _add(curves, name, step, value)
    return curves


def _add(curves: dict, name: str, step: int, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    points = curves.setdefault(name, [])
    while points and points[-1][0] >= step:
        points.pop()
    points.append((step, float(value)))


def _records(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # still being written
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
    return out


def config_diff(a: dict, b: dict) -> list[tuple[str, object, object]]:
    """(key, value in a, value in b) for every key whose values differ, sorted by key; a key one side lacks shows
    None there. Numbers compare by value (1e-4 == 0.0001)."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if not _same(x, y):
            out.append((key, x, y))
    return out


def _same(x, y) -> bool:
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool) and not isinstance(y, bool):
        return x == y or (math.isnan(x) and math.isnan(y))
    return x == y
