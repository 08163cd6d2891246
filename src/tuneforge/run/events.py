"""The run's event log: `events.jsonl` in output_dir, one JSON object a line, appended (never truncated, also on
resume) and flushed as it goes, so any process can follow a run it did not start (`follow`, `read_events`, `state`).

Records (every one has `event`, `time` (unix seconds) and `run` (this attempt's id)):
  started   stage, finetuning_type, pid, output_dir, resume_from_checkpoint, resolved {key: value}
  phase     phase: converting_model | tokenizing | memory_check | loading | training | evaluating | saving
  progress  phase, done, total (tokenizing)
  memory    the pre-run estimate: total_gib, available_gib, batch, known
  step      step, total, epoch, loss, learning_rate, grad_norm, tokens_per_second, eta_s (loss and lr on logging steps)
  finished  metrics
  failed    error, key (the config key it is about, or null), problems [{key, message}], type
  stopped   step, checkpoint (the folder `resume_from_checkpoint: auto` continues from, or null), message: a stop asked
            for (SIGTERM, the Board's stop button; see train/stop.py), not an error; no final model is written
Only the main process writes it.
"""

import json
import os
import time
import uuid

EVENTS_FILE = "events.jsonl"
FINAL = ("finished", "failed", "stopped")
PHASES = ("converting_model", "tokenizing", "memory_check", "loading", "training", "evaluating", "saving")


def _is_main() -> bool:
    try:
        from tuneforge.distributed import is_main_process
    except ImportError:
        return int(os.environ.get("RANK", "0")) == 0
    return is_main_process()


class EventLog:
    """Appends events to output_dir/events.jsonl (a no-op on other ranks than the main one)."""

    def __init__(self, output_dir: str, enabled: bool | None = None):
        self.path = os.path.join(output_dir, EVENTS_FILE)
        self.enabled = _is_main() if enabled is None else enabled
        self.run_id = uuid.uuid4().hex[:12]
        self._last_progress = 0.0

    def emit(self, event: str, **fields) -> dict:
        record = {"event": event, "time": round(time.time(), 3), "run": self.run_id, **fields}
        if self.enabled:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            line = json.dumps(record, default=str) + "\n"  # a NaN loss is written as NaN (Python reads it)
            with open(self.path, "a", encoding="utf-8") as fh:  # one write per line: a follower never sees half of one
                fh.write(line)
                fh.flush()
        return record

    def phase(self, name: str, **fields) -> dict:
        return self.emit("phase", phase=name, **fields)

    def progress(self, phase: str, every_s: float = 0.5):
        """A progress(done, total) callback that records at most one event per `every_s`, and always the last."""

        def report(done: int, total: int) -> None:
            now = time.time()
            if done >= total or now - self._last_progress >= every_s:
                self._last_progress = now
                self.emit("progress", phase=phase, done=done, total=total)

        return report

    def failed(self, error: BaseException) -> dict:
        stopped = getattr(error, "stopped_fields", None)  # train.stop.RunStopped: a stop asked for, not a failure
        if isinstance(stopped, dict):
            return self.emit("stopped", **stopped)
        problems = [{"key": p.key, "message": p.message} for p in getattr(error, "problems", [])]
        message = str(error) or type(error).__name__
        if isinstance(error, KeyboardInterrupt):
            message = "interrupted; checkpoints already written are kept (resume_from_checkpoint: auto continues)"
        return self.emit("failed", error=message, key=getattr(error, "key", None), problems=problems, type=type(error).__name__)


def read_events(output_dir: str) -> list[dict]:
    """Every complete event in output_dir/events.jsonl (a line still being written is left for later)."""
    return list(follow(output_dir, wait=False))


def follow(output_dir: str, wait: bool = True, poll_s: float = 0.2, timeout_s: float | None = None, offset: int = 0):
    """Yield events as they are appended, from byte `offset`. With `wait`, keeps waiting for new ones until the run
    finishes, fails or is stopped (the last attempt's final event), or `timeout_s` passes; the log need not exist yet."""
    path = os.path.join(output_dir, EVENTS_FILE)
    start, buffer = time.time(), b""
    while True:
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            offset += len(chunk)
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    record = json.loads(line)
                    yield record
                    if wait and record["event"] in FINAL:
                        return
        if not wait or (timeout_s is not None and time.time() - start > timeout_s):
            return
        time.sleep(poll_s)


def state(events: list[dict]) -> dict:
    """Where the run stands from its events: state (running, finished, failed, stopped or none), phase, the last step record,
    the error; only the last attempt (the last `started`) counts."""
    starts = [i for i, e in enumerate(events) if e["event"] == "started"]
    if not starts:
        return {"state": "none"}
    last = events[starts[-1]:]
    out = {"state": "running", "phase": "started", "run": last[0]["run"], "attempts": len(starts)}
    for e in last:
        if e["event"] == "phase":
            out["phase"] = e["phase"]
        elif e["event"] == "step":
            out["step"] = e
        elif e["event"] in FINAL:
            out["state"] = e["event"]
            out.update({k: e[k] for k in ("metrics", "error", "key", "problems", "checkpoint", "message") if k in e})
    return out
