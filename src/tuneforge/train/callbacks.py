"""Trainer callbacks every stage uses: a JSONL log of every logged step, and real-token throughput."""

import json
import os
import time

from transformers import TrainerCallback

from tuneforge.train.procstats import seconds_since_process_start

LOG_FILE = "trainer_log.jsonl"


class JsonlLogger(TrainerCallback):
    """Append each `on_log` record (step, epoch, loss, lr, tokens seen, elapsed) to output_dir/trainer_log.jsonl."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOG_FILE)
        self.start = None

    def on_train_begin(self, args, state, control, **kw):
        self.start = time.time()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if state.global_step == 0 and os.path.exists(self.path):
            os.remove(self.path)  # a fresh run (not a resume) starts a fresh log

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
                  "elapsed_s": round(time.time() - (self.start or time.time()), 3), **logs}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


class TokenCounter(TrainerCallback):
    """Remember the real tokens seen when this session started, so a resumed run counts only its own."""

    def __init__(self):
        self.tokens_at_start = 0
        self.first_step_time = None
        self.first_step_since_process_start = None
        self.start = None

    def on_train_begin(self, args, state, control, **kw):
        self.tokens_at_start = state.num_input_tokens_seen
        self.start = time.time()

    def on_step_end(self, args, state, control, **kw):
        if self.first_step_time is None:
            self.first_step_time = time.time() - self.start
            self.first_step_since_process_start = seconds_since_process_start()


class EventCallback(TrainerCallback):
    """Step progress into the run's event log: step, total, epoch, loss, learning rate, real tokens per second and
    the ETA; one record per logging step (with loss and lr) and at most one every `every_s` seconds in between."""

    def __init__(self, events, every_s: float = 2.0):
        self.events, self.every_s = events, every_s
        self.start = self.start_step = self.start_tokens = None
        self.last_emit = 0.0

    def on_train_begin(self, args, state, control, **kw):
        self.start, self.start_step, self.start_tokens = time.time(), state.global_step, state.num_input_tokens_seen
        self.events.phase("training", step=state.global_step, total=state.max_steps)

    def _record(self, state, **extra) -> dict:
        elapsed = max(time.time() - self.start, 1e-9)
        done = state.global_step - self.start_step
        tokens = state.num_input_tokens_seen - self.start_tokens
        eta = (state.max_steps - state.global_step) * elapsed / done if done else None
        return {"step": state.global_step, "total": state.max_steps, "epoch": round(state.epoch or 0.0, 4),
                "tokens_per_second": round(tokens / elapsed, 2), "eta_s": round(eta, 1) if eta is not None else None, **extra}

    def on_step_end(self, args, state, control, **kw):
        if time.time() - self.last_emit >= self.every_s and not control.should_log:
            self.last_emit = time.time()
            self.events.emit("step", **self._record(state))

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if "loss" not in logs:
            return
        self.last_emit = time.time()
        self.events.emit("step", **self._record(state, loss=logs.get("loss"), learning_rate=logs.get("learning_rate"),
                                                  grad_norm=logs.get("grad_norm")))
