"""Output folder rules: a finished run is never overwritten unless asked; `resume_from_checkpoint: auto`."""

import os
import re

from tuneforge import TuneforgeError

FINISHED_MARKER = "all_results.json"


def checkpoints(output_dir: str) -> list[str]:
    """checkpoint-N folders, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [d for d in os.listdir(output_dir) if re.fullmatch(r"checkpoint-\d+", d) and os.path.isdir(os.path.join(output_dir, d))]
    return [os.path.join(output_dir, d) for d in sorted(found, key=lambda d: int(d.split("-")[1]))]


def resolve_resume(output_cfg) -> str | None:
    """The checkpoint to resume from, after checking the folder is safe to write.

    Raises:
        TuneforgeError: naming output_dir / overwrite_output_dir / resume_from_checkpoint and the fix.
    """
    out, resume = output_cfg.output_dir, output_cfg.resume_from_checkpoint
    finished = os.path.isfile(os.path.join(out, FINISHED_MARKER))
    if os.path.exists(out) and not os.path.isdir(out):
        raise TuneforgeError(f"output_dir `{out}` is a file; choose a folder")
    if finished and not output_cfg.overwrite_output_dir:
        raise TuneforgeError(f"output_dir `{out}` holds a finished run; choose a new output_dir, or set overwrite_output_dir: true to replace it")
    if resume == "auto":
        found = checkpoints(out)
        return found[-1] if found else None
    if resume:
        if not os.path.isfile(os.path.join(resume, "trainer_state.json")):
            raise TuneforgeError(f"resume_from_checkpoint `{resume}` is not a checkpoint folder (no trainer_state.json); "
                                 f"use `auto` for the newest checkpoint in output_dir")
        return resume
    if checkpoints(out) and not output_cfg.overwrite_output_dir:
        raise TuneforgeError(f"output_dir `{out}` has checkpoints of an unfinished run; set resume_from_checkpoint: auto to continue it, "
                             f"or overwrite_output_dir: true to start over")
    return None
