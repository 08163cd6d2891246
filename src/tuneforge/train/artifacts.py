"""Artifacts in output_dir: the resolved config, the loss plot, the final metrics."""

import contextlib
import json
import logging
import os
import tempfile

import yaml

from tuneforge.distributed import is_main_process
from tuneforge.train.callbacks import LOG_FILE
from tuneforge.train.output import FINISHED_MARKER

log = logging.getLogger(__name__)
CONFIG_FILE = "tuneforge_config.yaml"
PLOT_FILE = "training_loss.png"


@contextlib.contextmanager
def _replacing(path: str, suffix: str = ".tmp"):
    """Yield the name of a uniquely named temporary file beside `path`; on success it replaces `path` in one
    rename (with the permissions a normal file would have), on error it is removed."""
    from tuneforge.fsutil import normal_mode

    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=f".{os.path.basename(path)}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, normal_mode())  # mkstemp's files are private
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _atomic_write(path: str, text: str) -> None:
    with _replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def save_config(cfg, output_dir: str) -> str:
    path = os.path.join(output_dir, CONFIG_FILE)
    if not is_main_process():
        return path
    os.makedirs(output_dir, exist_ok=True)
    _atomic_write(path, yaml.safe_dump(cfg.to_flat(), sort_keys=False, allow_unicode=True))
    return path


def read_log(output_dir: str) -> list[dict]:
    path = os.path.join(output_dir, LOG_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def plot_loss(output_dir: str) -> str | None:
    """training_loss.png from the JSONL log (train loss, and eval loss if any); only the main process draws it."""
    if not is_main_process():
        return None
    records = read_log(output_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train:
        log.warning("no logged loss to plot; lower logging_steps to log more often")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"training loss: {os.path.basename(os.path.abspath(output_dir))}")
    ax.legend()
    ax.grid(alpha=0.3)
    path = os.path.join(output_dir, PLOT_FILE)
    try:
        with _replacing(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def save_results(output_dir: str, metrics: dict) -> str:
    """all_results.json, written last: its presence marks a finished run."""
    path = os.path.join(output_dir, FINISHED_MARKER)
    if not is_main_process():
        return path
    _atomic_write(path, json.dumps(metrics, indent=2, sort_keys=True))
    return path
