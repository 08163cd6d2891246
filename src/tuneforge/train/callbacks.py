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
