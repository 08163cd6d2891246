"""Cache of tokenized datasets, keyed by everything that changes the result."""

import hashlib
import json
import os

from tuneforge.data.loaders import data_files

CACHE_VERSION = 1


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


def load(root: str, k: str):
    """The cached DatasetDict and its stats, or None."""
    from datasets import load_from_disk

    folder = os.path.join(root, "tokenized", k)
    if not os.path.isfile(os.path.join(folder, "stats.json")):
        return None
    with open(os.path.join(folder, "stats.json")) as fh:
        stats = json.load(fh)
    return load_from_disk(os.path.join(folder, "data")), stats


def save(root: str, k: str, dsd, stats: dict) -> None:
    """Write atomically: a temporary folder renamed into place, so a crash leaves no half cache."""
    from tuneforge.fsutil import atomic_folder

    with atomic_folder(os.path.join(root, "tokenized", k)) as tmp:
        dsd.save_to_disk(os.path.join(tmp, "data"))
        with open(os.path.join(tmp, "stats.json"), "w") as fh:
            json.dump(stats, fh)
