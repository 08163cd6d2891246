"""A clean stop on SIGTERM (the Board's stop button, `kill PID`): at the next step end the run writes a checkpoint and
ends as `stopped`, not `finished` (no final model, no all_results.json), and `tuneforge train` exits with EXIT_CODE;
`resume_from_checkpoint: auto` continues it from that checkpoint.

The module is import-light (no transformers at import) so that `tuneforge.cli` can catch RunStopped cheaply."""

import functools
import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

EXIT_CODE = 143  # 128 + SIGTERM: what a shell reports for a process ended by SIGTERM, distinct from errors (2)


class RunStopped(Exception):
    """Raised when training ended because a stop was asked for. The run's event log records it as `stopped` (it reads
    `stopped_fields`), the CLI prints it and exits with EXIT_CODE.

    Args:
        step: the optimizer step training ended at.
        checkpoint: the checkpoint folder written at that step (None when none could be written).
    """

    def __init__(self, step: int | None, checkpoint: str | None):
        if checkpoint:
            message = (f"stopped at step {step}; checkpoint {checkpoint} is kept: run again with "
                       f"resume_from_checkpoint: auto to continue")
        else:
            message = f"stopped at step {step}; no checkpoint was written"
        super().__init__(message)
        self.stopped_fields = {"step": step, "checkpoint": checkpoint, "message": message}


class SignalStop:
    """The stop logic as a TrainerCallback mixin (see `callback()`): SIGTERM sets a flag, the next step end asks the
    trainer to save a checkpoint and stop, and training's end raises RunStopped.

    The handler is installed when training begins, from the main thread only (Python runs signal handlers there), and
    the previous one is put back when training ends. Before training begins (tokenizing, loading) SIGTERM keeps its
    usual meaning: the process ends at once, and there is nothing to resume yet. A second SIGTERM while stopping ends
    the process at once too (no new checkpoint)."""

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum = signum
        self.requested = False  # set by the handler
        self.stopping = False  # the trainer was asked to save and stop
        self.checkpoint: str | None = None
        self._previous = None

    def request(self, *_) -> None:
        """The signal handler (also callable directly): ask for a stop at the next step end."""
        self.requested = True
        signal.signal(self.signum, signal.SIG_DFL)  # a second signal ends the process at once
        log.warning("stop asked for (signal %d): saving a checkpoint at the end of this step, then stopping; "
                    "send it again to end at once without one", self.signum)

    def on_train_begin(self, args, state, control, **kw):
        self.requested = self.stopping = False
        self.checkpoint = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self.request)
        else:
            log.debug("training runs outside the main thread: no handler for signal %d", self.signum)

    def on_step_end(self, args, state, control, **kw):
        if self.stopping or not _any_rank(self.requested, getattr(args, "device", None)):
            return
        self.stopping = True
        control.should_save = True  # saved even with save_strategy: no (the trainer checks this flag alone)
        control.should_training_stop = True

    def on_save(self, args, state, control, **kw):
        if self.stopping:
            self.checkpoint = os.path.abspath(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))

    def on_train_end(self, args, state, control, **kw):
        self._restore()
        if self.stopping:
            raise RunStopped(state.global_step, self.checkpoint)
        # a stop asked for after the last step: training is complete, so the run finishes and saves as usual

    def _restore(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._previous)
        self._previous = None


def _any_rank(flag: bool, device=None) -> bool:
    """True when any process of a distributed run was asked to stop, so that every rank stops at the same step (the
    checkpoint save is collective); a single process just returns its flag."""
    import sys

    dist = sys.modules.get("torch.distributed")  # loaded by every trainer; not imported here for a plain process
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return flag
    import torch

    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


@functools.cache
def _callback_class():
    from transformers import TrainerCallback

    return type("StopOnSignal", (SignalStop, TrainerCallback), {"__doc__": SignalStop.__doc__})


def callback(cfg=None, events=None):
    """A fresh StopOnSignal TrainerCallback for one run (run/hooks.py adds it to every run)."""
    return _callback_class()()
