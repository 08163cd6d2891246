"""Cache of tokenized datasets, keyed by everything that changes the result."""

import hashlib
import json
import logging
import os

from tuneforge.data.loaders import data_files

log = logging.getLogger(__name__)
# DataSection keys that change every kind of tokenized data; a builder adds its own (template, packing, ...)
SETTINGS = ("dataset", "cutoff_len", "max_samples", "val_size", "mix_strategy", "interleave_probs", "seed", "strict")

CACHE_VERSION = 4  # 2: stats carry train_longest; 3: json/csv read as written (no type coercion); 4: tools kept


def cache_root(cache_dir: str | None) -> str:
    return os.path.expanduser(cache_dir or os.environ.get("TUNEFORGE_CACHE") or "~/.cache/tuneforge")


def _files_fingerprint(paths: list[str]) -> list:
    out = []
    for path in paths:
        for f in data_files(path):
            st = os.stat(f)
            out.append([f, st.st_size, st.st_mtime_ns])
    return out


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256((body + str(tokenizer.chat_template) + str(tokenizer.eos_token)).encode()).hexdigest()


def key(attrs, tokenizer, settings: dict) -> str:
    """A hash of the data files, registry entries, tokenizer, template and encoding settings."""
    payload = {
        "v": CACHE_VERSION,
        "files": _files_fingerprint([a.path for a in attrs]),
        "attrs": [{k: v for k, v in vars(a).items()} for a in attrs],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _folder(root: str, k: str) -> str:
    return os.path.join(root, "tokenized", k)


def _complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "stats.json"))  # written last, renamed in with the data


def load(root: str, k: str):
    """The cached DatasetDict and its stats, or None.

    Under torchrun every rank calls this and gets the main process's answer: then either all ranks read the
    cache, or all miss and call `save` (which the main process writes and the others wait for).
    """
    from datasets import load_from_disk

    from tuneforge.distributed import broadcast_from_main

    folder = _folder(root, k)
    if not broadcast_from_main(_complete(folder)):
        return None
    with open(os.path.join(folder, "stats.json")) as fh:
        stats = json.load(fh)
    return load_from_disk(os.path.join(folder, "data")), stats


def save(root: str, k: str, dsd, stats: dict) -> None:
    """Write atomically: a temporary folder renamed into place, so a crash leaves no half cache. Only the main
    process writes; the other ranks (which hold the same rows) wait until it has.

    An entry that already existed before we started is replaced (overwrite_cache); one another process wrote
    while we tokenized holds the same content and is kept.
    """
    from tuneforge.distributed import is_main_process, main_process_first
    from tuneforge.fsutil import atomic_folder

    folder = _folder(root, k)
    with main_process_first(f"writing the tokenized data cache {folder}", ready=lambda: _complete(folder)):
        if not is_main_process():
            return
        with atomic_folder(folder, keep_existing=not _complete(folder)) as tmp:
            dsd.save_to_disk(os.path.join(tmp, "data"))
            with open(os.path.join(tmp, "stats.json"), "w") as fh:
                json.dump(stats, fh)


def cached(data_cfg, attrs, tokenizer, cache_dir: str | None, what: str, build, keys: tuple = (), **extra):
    """(parts, stats) from the cache when nothing that changes them changed; otherwise `build()` -> (parts, stats),
    saved. The key covers the data files, registry entries, tokenizer, `SETTINGS` + `keys` of `data_cfg` and `extra`;
    `overwrite_cache` rebuilds. `what` names the data in the log."""
    from datasets import DatasetDict

    settings = {**{k: getattr(data_cfg, k) for k in SETTINGS + tuple(keys)}, **extra}
    root, k = cache_root(cache_dir), key(attrs, tokenizer, settings)
    if not data_cfg.overwrite_cache:
        hit = load(root, k)
        if hit is not None:
            log.info("tokenized %s from cache %s", what, k)
            return dict(hit[0]), hit[1]
    parts, stats = build()
    save(root, k, DatasetDict(parts), stats)
    return parts, stats
