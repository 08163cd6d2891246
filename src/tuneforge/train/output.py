"""Output folder rules: a finished run is never overwritten unless asked; `resume_from_checkpoint: auto` picks the
newest complete checkpoint (train/checkpoints.py says what complete means)."""

import logging
import os
import re

from tuneforge import TuneforgeError

log = logging.getLogger(__name__)

FINISHED_MARKER = "all_results.json"


def checkpoint_folders(output_dir: str) -> list[str]:
    """Every checkpoint-N folder, complete or not, oldest (lowest step) first."""
    if not os.path.isdir(output_dir):
        return []
    found = [d for d in os.listdir(output_dir) if re.fullmatch(r"checkpoint-\d+", d) and os.path.isdir(os.path.join(output_dir, d))]
    return [os.path.join(output_dir, d) for d in sorted(found, key=lambda d: int(d.split("-")[1]))]


def checkpoints(output_dir: str) -> list[str]:
    """The complete checkpoint-N folders, oldest first (what `auto` and save_total_limit consider)."""
    from tuneforge.train.checkpoints import is_complete

    return [path for path in checkpoint_folders(output_dir) if is_complete(path)[0]]


def incomplete_checkpoints(output_dir: str) -> list[tuple[str, str]]:
    """(folder, why) for checkpoint-N folders a crash left half-written (ignored by `auto`)."""
    from tuneforge.train.checkpoints import is_complete

    return [(path, why) for path in checkpoint_folders(output_dir) for ok, why in [is_complete(path)] if not ok]


def newest_complete(output_dir: str) -> tuple[str | None, list[str]]:
    """(the newest complete checkpoint or None, a line per incomplete folder newer than it, for the log)."""
    found = checkpoints(output_dir)
    newest = found[-1] if found else None
    step = int(newest.rsplit("-", 1)[1]) if newest else -1
    skipped = [f"{os.path.basename(p)} skipped: {why}" for p, why in incomplete_checkpoints(output_dir)
               if int(p.rsplit("-", 1)[1]) > step]
    return newest, skipped


def resolve_resume(output_cfg) -> str | None:
    """The checkpoint to resume from, after checking the folder is safe to write.

    Raises:
        TuneforgeError: naming output_dir / overwrite_output_dir / resume_from_checkpoint and the fix.
    """
    from tuneforge.train.checkpoints import is_complete

    out, resume = output_cfg.output_dir, output_cfg.resume_from_checkpoint
    finished = os.path.isfile(os.path.join(out, FINISHED_MARKER))
    if os.path.exists(out) and not os.path.isdir(out):
        raise TuneforgeError(f"output_dir `{out}` is a file; choose a folder")
    if finished and not output_cfg.overwrite_output_dir:
        raise TuneforgeError(f"output_dir `{out}` holds a finished run; choose a new output_dir, or set overwrite_output_dir: true to replace it")
    if resume == "auto":
        newest, skipped = newest_complete(out)
        for line in skipped:
            log.warning("resume_from_checkpoint auto: %s", line)
        return newest
    if resume:
        if not os.path.isdir(resume) or not os.path.exists(os.path.join(resume, "trainer_state.json")):
            raise TuneforgeError(f"resume_from_checkpoint `{resume}` is not a checkpoint folder (no trainer_state.json); "
                                 f"use `auto` for the newest checkpoint in output_dir")
        complete, why = is_complete(resume)
        if not complete:
            raise TuneforgeError(f"resume_from_checkpoint `{resume}` is incomplete: {why}; use `auto` for the newest "
                                 f"complete checkpoint in output_dir")
        return resume
    if output_cfg.overwrite_output_dir:
        return None
    if checkpoints(out):
        raise TuneforgeError(f"output_dir `{out}` has checkpoints of an unfinished run; set resume_from_checkpoint: auto to continue it, "
                             f"or overwrite_output_dir: true to start over")
    broken = incomplete_checkpoints(out)
    if broken:
        listed = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in broken)
        raise TuneforgeError(f"output_dir `{out}` has checkpoint folders but none is complete ({listed}), so "
                             f"resume_from_checkpoint: auto has nothing to continue from; set overwrite_output_dir: true "
                             f"to start over (each is replaced when its step is saved again)")
    return None
