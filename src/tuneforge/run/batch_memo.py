"""The largest batch of a config's data (run.memory_check.Batch), remembered by what decides it, so a repeated
`tuneforge estimate` answers without loading the tokenizer (transformers) or the tokenized data (datasets): about
3 s of imports.

The key covers the stage, every data setting, the micro-batch size, the data files (path, size, modification time) with their
dataset_info.json entries, and the tokenizer's source files (the model folder's files, or the GGUF file and whether
its converted folder exists), each by size and modification time. A change to any of them misses, and the estimate
measures the data again (through the tokenized-data cache) and remembers the new answer. A model or dataset that is
not a local file (a hub cache entry, say) is never remembered.
"""

import dataclasses
import hashlib
import json
import os

from tuneforge.data.cache import CACHE_VERSION, cache_root

VERSION = 1


def _stat(path: str) -> list:
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


def _tokenizer_files(cfg, root: str) -> list:
    from tuneforge.models import aliases, gguf

    source = aliases.resolve(cfg.model.model_name_or_path)
    if source.gguf_file:
        converted = os.path.join(gguf.cached_folder(source, root), "config.json")
        return [_stat(source.path), os.path.isfile(converted)]
    return [_stat(os.path.join(source.path, f)) for f in sorted(os.listdir(source.path))
            if os.path.isfile(os.path.join(source.path, f))]


def key(cfg) -> str | None:
    """The memo key of `cfg`'s data as its stage tokenizes it, or None when it cannot be computed cheaply."""
    from tuneforge.data import registry
    from tuneforge.data.cache import _files_fingerprint

    if cfg.data.streaming or not cfg.data.dataset:
        return None
    root = cache_root(cfg.model.cache_dir)
    try:
        attrs = registry.resolve(cfg.data.dataset, cfg.data.dataset_dir)
        payload = {"v": [VERSION, CACHE_VERSION], "stage": cfg.method.stage, "data": dataclasses.asdict(cfg.data),
                   "batch": cfg.train.get("per_device_train_batch_size", 8),
                   "files": _files_fingerprint([a.path for a in attrs]), "attrs": [vars(a) for a in attrs],
                   "model": [cfg.model.model_name_or_path, cfg.model.trust_remote_code, _tokenizer_files(cfg, root)]}
    except Exception:  # noqa: BLE001 - anything unusual (a hub dataset, a missing file) just skips the memo
        return None
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _path(cfg, k: str) -> str:
    return os.path.join(cache_root(cfg.model.cache_dir), "batch_memo", f"{k}.json")


def recall(cfg, k: str | None):
    """The remembered Batch for key `k`, or None."""
    from tuneforge.run.memory_check import Batch

    if k is None:
        return None
    try:
        with open(_path(cfg, k), encoding="utf-8") as fh:
            return Batch(**json.load(fh))
    except (OSError, ValueError, TypeError):
        return None


def remember(cfg, k: str | None, batch) -> None:
    """Keep `batch` under key `k` (a failed write only costs the next estimate its time)."""
    if k is None:
        return
    path = _path(cfg, k)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(dataclasses.asdict(batch), fh)
        os.replace(tmp, path)
    except OSError:
        pass
