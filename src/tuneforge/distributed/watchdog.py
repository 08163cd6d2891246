"""No silent hangs: with several processes, a rank where no training step finishes for `watchdog_timeout_s` dumps
the Python stack of every thread (to stderr and output_dir/watchdog-rank<N>.txt), says what it was most likely
waiting for, and exits; torch.distributed.run then stops the other ranks (whose own watchdogs fire at the same time
when they wait for it in a collective, so every rank's stacks are there).

A thread and not faulthandler.dump_traceback_later alone, so the message can name the likely cause from where the
main thread stands. A collective (all-reduce, barrier) and a blocking data loader release the GIL, so the thread runs.

Fault injection, to check a cluster's setup end to end: TUNEFORGE_DEBUG_STALL=<rank>@<step> makes that rank sleep
at the start of that step (forever); TUNEFORGE_DEBUG_FAIL=<rank>@<step> makes it raise there.
"""

import faulthandler
import logging
import os
import sys
import threading
import time
import traceback

from transformers import TrainerCallback

log = logging.getLogger(__name__)

EXIT_CODE = 3
GRACE_S = 3.0  # let the other ranks' watchdogs (stalled with this one) dump theirs before torchrun stops them
STALL_ENV, FAIL_ENV = "TUNEFORGE_DEBUG_STALL", "TUNEFORGE_DEBUG_FAIL"


def likely_cause(frames: list[traceback.FrameSummary], world: int) -> str:
    """What the main thread is most likely waiting for, from the files on its stack (innermost first)."""
    for f in reversed(frames):
        path = f.filename.replace("\\", "/")
        if f.name == "inject" and path.endswith("distributed/watchdog.py"):
            return f"{STALL_ENV} made this rank stall on purpose"
        if "torch/distributed" in path or "torch/nn/parallel/distributed" in path or "/deepspeed/" in path:
            return (f"this rank waits in a collective operation ({f.name} in {os.path.basename(path)}): another of the "
                    f"{world} ranks is stuck, much slower, or died without the job ending")
        if "torch/autograd" in path:
            return ("this rank is in backward, where DDP all-reduces the gradients: another rank is stuck, much slower, "
                    "or took a different code path (a different number of steps or of trainable parameters)")
        if "torch/utils/data" in path:
            return "this rank waits for its data loader (a stuck worker, a slow file system or a streaming source)"
    return ("this rank is busy or blocked in the code shown in its stack (a deadlock, a sleeping or endless loop, "
            "a step far slower than watchdog_timeout_s)")


def main_thread_stack() -> list[traceback.FrameSummary]:
    frame = sys._current_frames().get(threading.main_thread().ident)
    return traceback.extract_stack(frame) if frame is not None else []


class StallWatchdog(TrainerCallback):
    """Arms at the start of training; every finished step (or evaluation step, save, log) resets the clock."""

    def __init__(self, timeout_s: float, output_dir: str, rank: int, world: int, exit_fn=os._exit, poll_s: float | None = None):
        self.timeout_s, self.output_dir, self.rank, self.world = timeout_s, output_dir, rank, world
        self.exit_fn = exit_fn
        self.poll_s = poll_s if poll_s is not None else min(5.0, max(timeout_s / 10, 0.1))
        self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired: str | None = None

    # progress
    def _tick(self, *args, **kwargs):
        self.last = time.monotonic()

    on_step_end = on_substep_end = on_prediction_step = on_evaluate = on_save = on_log = _tick

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="tuneforge-watchdog", daemon=True)
        self._thread.start()

    def on_train_end(self, args, state, control, **kwargs):
        self._stop.set()

    def on_step_begin(self, args, state, control, **kwargs):
        inject(self.rank, state.global_step + 1)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            if time.monotonic() - self.last > self.timeout_s:
                self.fire()
                return

    def fire(self) -> None:
        """Dump every thread's stack, explain, report to the launcher, exit."""
        from tuneforge.distributed.launch import write_report

        idle = time.monotonic() - self.last
        path = os.path.join(self.output_dir, f"watchdog-rank{self.rank}.txt")
        message = (f"rank {self.rank}: no training step finished for {idle:.0f} s (watchdog_timeout_s: {self.timeout_s:g}); "
                   f"likely cause: {likely_cause(main_thread_stack(), self.world)}. Stacks of this rank's threads: {path}. "
                   f"If steps are legitimately this slow, raise watchdog_timeout_s (0 turns the watchdog off)")
        self.fired = message
        print(f"error: {message}", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        try:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(message + "\n\n")
                fh.flush()
                faulthandler.dump_traceback(file=fh, all_threads=True)
        except OSError as e:
            log.error("could not write %s: %s", path, e)
        write_report(self.rank, message, kind="StallWatchdog")
        time.sleep(GRACE_S)
        self.exit_fn(EXIT_CODE)


def inject(rank: int, step: int) -> None:
    """The fault-injection hook (see the module docstring); nothing unless one of its variables names this rank."""
    for name in (STALL_ENV, FAIL_ENV):
        value = os.environ.get(name)
        if value and value == f"{rank}@{step}":
            if name == FAIL_ENV:
                raise RuntimeError(f"{FAIL_ENV}: rank {rank} fails at step {step} on purpose")
            log.warning("%s: rank %d stalls at step %d on purpose", STALL_ENV, rank, step)
            while True:
                time.sleep(60)


def callbacks(cfg) -> list:
    """The watchdog for a run of several processes (none for one process or watchdog_timeout_s: 0)."""
    from tuneforge.distributed import rank, world_size

    world = world_size()
    if world <= 1 or not cfg.method.watchdog_timeout_s:
        return []
    return [StallWatchdog(cfg.method.watchdog_timeout_s, cfg.output.output_dir, rank(), world)]
