"""Artifacts in output_dir: the resolved config, the loss plot, the final metrics."""

import json
import logging
import os

import yaml

from tuneforge.train.callbacks import LOG_FILE
from tuneforge.train.output import FINISHED_MARKER

log = logging.getLogger(__name__)
CONFIG_FILE = "tuneforge_config.yaml"
PLOT_FILE = "training_loss.png"


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def save_config(cfg, output_dir: str) -> str:
    path = os.path.join(output_dir, CONFIG_FILE)
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
    """training_loss.png from the JSONL log (train loss, and eval loss if any)."""
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
    fig.savefig(path + ".tmp.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return path


def save_results(output_dir: str, metrics: dict) -> str:
    """all_results.json, written last: its presence marks a finished run."""
    path = os.path.join(output_dir, FINISHED_MARKER)
    _atomic_write(path, json.dumps(metrics, indent=2, sort_keys=True))
    return path
