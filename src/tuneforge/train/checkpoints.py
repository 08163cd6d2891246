"""Crash-safe checkpoints: each one is written into a hidden sibling (`.tmp-checkpoint-N`), every file fsynced, a
manifest of file sizes written last, and only then renamed to `checkpoint-N`. So a folder named checkpoint-N is
complete, or was written by something else (an older tuneforge, plain transformers) and is checked by its files.

`AtomicCheckpoints` is the Trainer mixin that does it (every stage's trainer gets it in stages/common.py);
`resume_from_checkpoint: auto` reads `is_complete` through train/output.py."""

import json
import logging
import os
import re
import shutil
import time

from tuneforge import TuneforgeError

log = logging.getLogger(__name__)

MANIFEST = "tuneforge_checkpoint.json"  # {"step": N, "files": {relative path: size}}; written last
STAGING_PREFIX = ".tmp-"  # .tmp-checkpoint-N: a save in progress, or one a crash interrupted
CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")
# fault injection for the crash tests: "save:<step>:<seconds>" pauses the save of checkpoint-<step> after the model
# files are written and before the optimizer's (a kill then lands in the middle of a save); "step:<step>:<seconds>"
# pauses after optimizer step <step> (a kill then lands between checkpoints). Unset, nothing changes.
PAUSE_ENV = "TUNEFORGE_TEST_PAUSE"


def is_complete(folder: str) -> tuple[bool, str]:
    """(complete, why not). A folder with our manifest is complete when every file it lists is there with its size.
    One without (an older tuneforge's, or written by transformers directly) is complete when its trainer_state.json,
    the last file transformers writes into a checkpoint, reads as JSON."""
    manifest = os.path.join(folder, MANIFEST)
    if os.path.isfile(manifest):
        try:
            with open(manifest, encoding="utf-8") as fh:
                files = json.load(fh)["files"]
        except (OSError, ValueError, KeyError) as e:
            return False, f"its {MANIFEST} is unreadable ({e})"
        for rel, size in files.items():
            path = os.path.join(folder, rel)
            if not os.path.isfile(path):
                return False, f"{rel} is missing"
            if os.path.getsize(path) != size:
                return False, f"{rel} has {os.path.getsize(path)} bytes, not {size}"
        return True, ""
    if os.path.exists(os.path.join(folder, "checkpoint-is-incomplete.txt")):  # transformers' JIT checkpoint sentinel
        return False, "transformers marked it incomplete (checkpoint-is-incomplete.txt)"
    try:
        with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as fh:
            json.load(fh)
    except FileNotFoundError:
        return False, "it has no trainer_state.json (its save was interrupted)"
    except (OSError, ValueError):
        return False, "its trainer_state.json is cut short (its save was interrupted)"
    return True, ""


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: str, step: int) -> None:
    """fsync every file and folder under `folder`, then write the manifest (itself fsynced): the completeness mark."""
    files = {}
    for root, dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if name != MANIFEST and os.path.isfile(path) and not os.path.islink(path):
                _fsync(path)
                files[os.path.relpath(path, folder)] = os.path.getsize(path)
        for name in dirs:
            _fsync(os.path.join(root, name))
    tmp = os.path.join(folder, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"step": step, "files": dict(sorted(files.items()))}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(folder, MANIFEST))
    _fsync(folder)


def publish(staged: str, final: str, step: int) -> None:
    """Mark `staged` complete and move it to `final` in one rename (a leftover `final`, e.g. a half-written folder of
    the same step from a run that crashed, is replaced)."""
    from tuneforge.fsutil import _replace_folder

    write_manifest(staged, step)
    _replace_folder(staged, final)
    _fsync(os.path.dirname(final))


def clean_staging(run_dir: str) -> list[str]:
    """Remove `.tmp-checkpoint-N` (and `.old-checkpoint-N-*`) folders a crash left in `run_dir`; returns their names."""
    removed = []
    if os.path.isdir(run_dir):
        for name in os.listdir(run_dir):
            staged = name.startswith(STAGING_PREFIX) and CHECKPOINT_RE.fullmatch(name[len(STAGING_PREFIX):])
            replaced = name.startswith(".old-") and re.fullmatch(r"checkpoint-\d+-[0-9a-f]{12}", name[len(".old-"):])
            if staged or replaced:  # replaced: an old copy fsutil._replace_folder had moved aside when a crash came
                shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
                removed.append(name)
    if removed:
        log.info("removed %s left by an interrupted checkpoint save in %s", ", ".join(sorted(removed)), run_dir)
    return removed


def rotate(run_dir: str, limit: int | None, best: str | None) -> list[str]:
    """Keep at most `limit` complete checkpoints, deleting the oldest by step; never the newest complete one nor
    `best` (load_best_model_at_end). Incomplete folders are not counted and not touched. Returns what was deleted."""
    from tuneforge.train.output import checkpoints

    if not limit or limit <= 0:
        return []
    found = checkpoints(run_dir)
    keep = {os.path.abspath(found[-1])} if found else set()
    if best:
        keep.add(os.path.abspath(best))
    deleted = []
    for path in found:
        if len(found) - len(deleted) <= max(limit, len(keep)):
            break
        if os.path.abspath(path) not in keep:
            _delete(path)
            deleted.append(path)
    if deleted:
        log.info("save_total_limit %d: deleted %s", limit, ", ".join(os.path.basename(p) for p in deleted))
    return deleted


def _delete(path: str) -> None:
    """Rename a checkpoint out of sight first, so a crash halfway through deleting it never leaves a folder named
    checkpoint-N that has lost files but kept its trainer_state.json (the next save removes the renamed leftover)."""
    hidden = os.path.join(os.path.dirname(path), STAGING_PREFIX + os.path.basename(path))
    shutil.rmtree(hidden, ignore_errors=True)
    os.rename(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _pause_for_tests(where: str, step: int) -> None:
    kind, _, rest = os.environ.get(PAUSE_ENV, "").partition(":")
    at, _, seconds = rest.partition(":")
    if kind == where and at == str(step):
        log.warning("%s: pausing %ss at %s %d", PAUSE_ENV, seconds or 60, where, step)
        time.sleep(float(seconds or 60))


def _pause_callback():
    from transformers import TrainerCallback

    class PauseAfterStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            _pause_for_tests("step", state.global_step)

    return PauseAfterStep()


class AtomicCheckpoints:
    """Trainer mixin: `_save_checkpoint` writes into `.tmp-checkpoint-N` (the library's own save, unchanged, pointed
    there), then publishes it as checkpoint-N with a manifest, and rotates with `rotate` (the library's rotation
    would see only the staging folder). `train(resume_from_checkpoint=...)` first checks the checkpoint against this
    run (resume_fingerprint.check) and restores the callbacks' saved state.

    `run_config` is set by stages.common.build_trainer; without it resumes are not checked."""

    run_config = None
    _staging_run_dir: str | None = None

    def _get_output_dir(self, trial):
        return self._staging_run_dir or super()._get_output_dir(trial)

    def _save_optimizer_and_scheduler(self, output_dir):
        _pause_for_tests("save", self.state.global_step)
        return super()._save_optimizer_and_scheduler(output_dir)

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, STAGING_PREFIX + name)
        if self.args.should_save:
            clean_staging(run_dir)
        self.accelerator.wait_for_everyone()  # nobody writes into a staging folder the main process is deleting
        self._staging_run_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_run_dir = None
        staged, final = os.path.join(staging, name), os.path.join(run_dir, name)
        if self.state.best_model_checkpoint and os.path.abspath(self.state.best_model_checkpoint) == os.path.abspath(staged):
            self.state.best_model_checkpoint = final
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
        self.accelerator.wait_for_everyone()  # every rank's files (optimizer shards, RNG states) are written
        if self.args.should_save:
            from tuneforge.train import resume_fingerprint

            resume_fingerprint.save(staged, self)
            publish(staged, final, self.state.global_step)
            shutil.rmtree(staging, ignore_errors=True)
            rotate(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        if resume_from_checkpoint is True:  # the library's "newest in output_dir" would not skip an incomplete one
            from tuneforge.train.output import newest_complete

            resume_from_checkpoint = newest_complete(self.args.output_dir)[0]
            if resume_from_checkpoint is None:
                raise TuneforgeError(f"no complete checkpoint in {self.args.output_dir} to resume from",
                                     key="resume_from_checkpoint")
        if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint:
            from tuneforge.train import resume_fingerprint

            resume_fingerprint.check(resume_from_checkpoint, self)
        if os.environ.get(PAUSE_ENV, "").startswith("step:"):
            self.add_callback(_pause_callback())
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)


_WITH_MIXIN: dict[type, type] = {}


def with_atomic_checkpoints(cls: type) -> type:
    """`cls` (a Trainer class, HF or TRL) with `AtomicCheckpoints` in front; `cls` itself when it has it already."""
    if issubclass(cls, AtomicCheckpoints):
        return cls
    if cls not in _WITH_MIXIN:
        _WITH_MIXIN[cls] = type(cls.__name__, (AtomicCheckpoints, cls),
                                {"__doc__": f"{cls.__name__} whose checkpoints are written atomically (train/checkpoints.py).",
                                 "__module__": __name__, "__qualname__": cls.__qualname__})
    return _WITH_MIXIN[cls]
