"""Callbacks every run gets besides logging, each owned by the module that defines it: a clean stop on SIGTERM
(the Board's stop button), the stalled-rank watchdog (several processes). `build()` appends what this returns."""


def run_callbacks(cfg, events) -> list:
    """The extra TrainerCallbacks for this run (an entry may be skipped when it does not apply)."""
    from tuneforge.distributed import watchdog
    from tuneforge.train import stop

    out: list = [stop.callback(cfg, events)]
    out += watchdog.callbacks(cfg)
    return out
