"""Which process this is under torchrun, and doing shared side effects (caches, files) once.

Before torch.distributed is initialized the rank comes from the RANK / WORLD_SIZE variables torchrun sets.
Next to it: launch.py (`tuneforge train` starting several processes, failure reports), watchdog.py (stalled ranks
dump their stacks and end the job), checks.py (combinations refused before anything loads)."""

import contextlib
import logging
import os
import sys
import time
from typing import Callable, Iterator

from tuneforge import TuneforgeError

log = logging.getLogger(__name__)
WAIT_TIMEOUT_S = 1800.0  # converting a large GGUF or tokenizing a big dataset on the main process can take long
POLL_S = 0.5


def _initialized() -> bool:
    if "torch.distributed" not in sys.modules:  # a process group needs it imported; checking must not import torch
        return False
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    if _initialized():
        import torch.distributed as dist

        return dist.get_rank()
    return _env_int("RANK", 0)


def world_size() -> int:
    """How many processes run this job (1 when not distributed)."""
    if _initialized():
        import torch.distributed as dist

        return dist.get_world_size()
    return max(_env_int("WORLD_SIZE", 1), 1)


def is_main_process() -> bool:
    return rank() == 0


def broadcast_from_main(value):
    """The main process's `value` on every rank (a collective: every rank must call it). Without an initialized
    process group each process keeps its own value."""
    if not _initialized() or world_size() <= 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_process_first(what: str, ready: Callable[[], bool] | None = None, timeout_s: float | None = None) -> Iterator[None]:
    """Run the body on the main process first, then on the other ranks (which then find its result ready).

    With torch.distributed initialized the ranks meet at a barrier (every rank must enter, also the main one when
    its body fails). Before that, the other ranks poll `ready()` every 0.5 s for up to `timeout_s` seconds (default
    WAIT_TIMEOUT_S); without `ready` they cannot wait and run the body at once.

    Raises:
        TuneforgeError: naming `what` when `ready()` stays false for `timeout_s` seconds.
    """
    if world_size() <= 1:
        yield
        return
    if _initialized():
        import torch.distributed as dist

        if is_main_process():
            try:
                yield
            finally:
                dist.barrier()  # release the others, also when the body failed (they then find nothing ready)
        else:
            dist.barrier()
            yield
        return
    if not is_main_process() and ready is not None:
        timeout_s = WAIT_TIMEOUT_S if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        if not ready():
            log.info("rank %d: waiting for the main process to finish %s", rank(), what)
        while not ready():
            if time.monotonic() >= deadline:
                raise TuneforgeError(f"rank {rank()} waited {timeout_s:.0f} s for the main process (rank 0) to finish {what}; "
                                     f"did rank 0 fail? (its log says why)")
            time.sleep(POLL_S)
    yield


def is_sharded(param) -> bool:
    """Whether this process holds only part of a parameter: an FSDP2 DTensor or a DeepSpeed ZeRO-3 parameter (it has
    a `ds_id`). The fused LoRA forward and the
    fused LM-head loss read weights outside their module's forward, where such a parameter is not whole; they fall
    back to the plain paths for it."""
    if param is None:
        return False
    if hasattr(param, "ds_id") or type(param).__name__ == "DTensor":
        return True
    return False


_FALLBACK_LOGGED: set[str] = set()


def log_sharded_fallback(what: str) -> None:
    """Say once per process that `what` takes its plain path because parameters are sharded."""
    if what not in _FALLBACK_LOGGED:
        _FALLBACK_LOGGED.add(what)
        log.info("%s: parameters are sharded (FSDP / DeepSpeed ZeRO-3), using the plain path", what)
