"""Result files: `results.json` records the model, adapter, a hash of every data file read and the settings beside
the numbers; `generated_predictions.jsonl` the generations. Each file is written whole or not at all. `compare` puts two
result files side by side (the before/after view)."""

import hashlib
import json
import os

from tuneforge import TuneforgeError

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "generated_predictions.jsonl"


def data_hash(files: list[str]) -> str:
    """sha256 over the names and bytes of the data files read (sorted), so two results on different data differ."""
    h = hashlib.sha256()
    for path in sorted(set(os.path.abspath(f) for f in files)):
        h.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def check_save_dir(save_dir: str, overwrite: bool) -> None:
    """Refuse, before anything runs, a save_dir that already holds results (unless overwrite_save_dir is set). Other
    files in it (a training run's, say) are never touched."""
    if os.path.isfile(save_dir):
        raise TuneforgeError(f"save_dir `{save_dir}` is a file; give a folder", key="save_dir")
    there = [f for f in (RESULTS_FILE, PREDICTIONS_FILE) if os.path.exists(os.path.join(save_dir, f))]
    if there and not overwrite:
        raise TuneforgeError(f"save_dir `{save_dir}` already holds {' and '.join(there)}; choose a new folder or set "
                             f"overwrite_save_dir: true to replace them", key="save_dir")


def _write(path: str, text: str) -> None:
    """Write a file whole or not at all: a temporary file beside it, renamed over it."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save(save_dir: str, record: dict, predictions: list[dict] | None) -> str:
    """Write the predictions (if any), then results.json, into save_dir; return the results path. A stale predictions
    file from an earlier run is removed when this run has none."""
    os.makedirs(save_dir, exist_ok=True)
    pred_path = os.path.join(save_dir, PREDICTIONS_FILE)
    if predictions:
        _write(pred_path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
    elif os.path.exists(pred_path):
        os.remove(pred_path)
    path = os.path.join(save_dir, RESULTS_FILE)
    _write(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return path


def load(path: str) -> dict:
    """A results.json (or the folder holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS_FILE)
    if not os.path.isfile(path):
        raise TuneforgeError(f"`{path}` does not exist; give a results.json written by `tuneforge eval` (or its folder)")
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TuneforgeError(f"`{path}` is not a valid results file: {e}") from None
    if not isinstance(record, dict) or "results" not in record:
        raise TuneforgeError(f"`{path}` is not a results file of `tuneforge eval` (it has no `results`)")
    return record


def metrics(record: dict) -> dict[str, float]:
    """The numbers of a result as `name: value`, in a stable order: per task overall, category and subject accuracy,
    then generation metrics, then perplexity."""
    out: dict[str, float] = {}
    res = record["results"]
    for task in res.get("choice", []):
        name = f"{task['task']}_{task['split']}"
        out[f"{name} accuracy"] = task["accuracy"]
        out.update({f"{name} [{c}]": v["accuracy"] for c, v in task.get("categories", {}).items()})
        out.update({f"{name} {s}": v["accuracy"] for s, v in sorted(task.get("subjects", {}).items())})
    out.update({k: v for k, v in res.get("generation", {}).items() if k != "examples"})
    if "perplexity" in res:
        out["perplexity"] = res["perplexity"]["perplexity"]
    return out


def _who(record: dict) -> str:
    return record.get("model", "?") + (f" + {record['adapter']}" if record.get("adapter") else "")


def table(record: dict) -> str:
    """One result as a two-column table."""
    rows = metrics(record)
    width = max([len(k) for k in rows] + [6])
    lines = [f"{_who(record)}", f"{'metric':<{width}}  value"]
    lines += [f"{k:<{width}}  {v:8.2f}" for k, v in rows.items()]
    return "\n".join(lines)


def compare(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> str:
    """Two results side by side with the change (B - A); a metric only one of them has shows `-` for the other."""
    ma, mb = metrics(a), metrics(b)
    keys = list(ma) + [k for k in mb if k not in ma]
    width = max([len(k) for k in keys] + [6])
    lines = [f"{names[0]}: {_who(a)} (data {a.get('data_sha256', '?')[:12]})",
             f"{names[1]}: {_who(b)} (data {b.get('data_sha256', '?')[:12]})"]
    if a.get("data_sha256") != b.get("data_sha256"):
        lines.append("note: the two runs read different data files; their numbers are not measured on the same questions")
    lines.append(f"{'metric':<{width}}  {names[0]:>8}  {names[1]:>8}  {'change':>8}")
    fmt = lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}"  # noqa: E731
    for k in keys:
        va, vb = ma.get(k), mb.get(k)
        change = f"{vb - va:+8.2f}" if va is not None and vb is not None else f"{'-':>8}"
        lines.append(f"{k:<{width}}  {fmt(va)}  {fmt(vb)}  {change}")
    return "\n".join(lines)
