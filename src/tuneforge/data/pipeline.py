"""The data pipeline: registry -> loader -> format converter -> mix/split -> template encoding (cached)."""

import hashlib
import json
import logging

from tuneforge.data import cache, registry
from tuneforge.data.errors import DataError
from tuneforge.data.formats import to_messages
from tuneforge.data.loaders import load_rows
from tuneforge.data.templates import IGNORE_INDEX, TOOLS_TEXT_FORMAT, encode, renders_tools

log = logging.getLogger(__name__)


def load_conversations(data_cfg, attrs=None):
    """Every training dataset as `messages` rows, mixed; bad rows reported. Needs no tokenizer.

    Args:
        data_cfg: the DataSection.
        attrs: the resolved registry entries, if already looked up.

    Returns (Dataset, stats) where stats has per-dataset row counts and skipped rows.
    """
    attrs = attrs or registry.resolve(data_cfg.dataset, data_cfg.dataset_dir)
    parts, stats = [], {}
    for attr in attrs:
        ds = load_rows(attr)
        if data_cfg.max_samples is not None:
            ds = ds.select(range(min(data_cfg.max_samples, len(ds))))
        converted, st = to_messages(ds, attr, data_cfg.strict, log)
        parts.append(converted)
        stats[attr.name] = st
    return mix(parts, data_cfg), stats


def mix(parts: list, data_cfg):
    """Several datasets (in-memory or streamed) as one, by `mix_strategy`: concat, or interleaved with
    `interleave_probs` until the first (interleave_under) or every (interleave_over) dataset is exhausted."""
    from datasets import concatenate_datasets, interleave_datasets

    if len(parts) == 1:
        return parts[0]
    if data_cfg.mix_strategy == "concat":
        return concatenate_datasets(parts)
    stopping = "first_exhausted" if data_cfg.mix_strategy == "interleave_under" else "all_exhausted"
    return interleave_datasets(parts, probabilities=data_cfg.interleave_probs, seed=data_cfg.seed, stopping_strategy=stopping)


def split(ds, val_size: float, seed: int) -> dict:
    """{"train": ..., "eval": ...} with a seeded held-out part when val_size is set."""
    if not val_size:
        return {"train": ds}
    n = int(val_size) if val_size >= 1 else val_size
    if (n if isinstance(n, int) else round(n * len(ds))) >= len(ds) or len(ds) < 2:
        raise DataError(f"val_size {val_size} leaves no training rows out of {len(ds)}; lower val_size")
    parts = ds.train_test_split(test_size=n, seed=seed, shuffle=True)
    return {"train": parts["train"], "eval": parts["test"]}


LONGEST_KEPT = 256  # token counts of the longest rows kept in the stats (the pre-run memory check reads them)


def tokenize(ds, tokenizer, data_cfg, progress=None):
    """Encode `messages` rows to input_ids/labels; drop rows left with no supervised token.

    Args:
        progress: called as progress(done, total) while rows are encoded in this process (not with several workers).
    """
    from tuneforge.data.cache import tokenizer_fingerprint

    total, done = len(ds), [0]
    in_process = progress is not None and (data_cfg.preprocessing_num_workers or 1) <= 1

    if "tools" in ds.column_names and not renders_tools(tokenizer):  # tool-calling data (to_messages adds the column then)
        log.info("the chat template does not render tools; tool calling is written as text: %s", TOOLS_TEXT_FORMAT)

    def fn(row):
        ids, labels = encode(tokenizer, row["messages"], data_cfg.cutoff_len, data_cfg.train_on_prompt, data_cfg.mask_history,
                             row.get("tools"))
        if in_process:
            done[0] += 1
            progress(done[0], total)
        return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}

    # the fingerprint names what the result depends on (the progress callback in `fn` cannot be hashed)
    fingerprint = hashlib.sha256(json.dumps([ds._fingerprint, tokenizer_fingerprint(tokenizer), data_cfg.cutoff_len,
                                             data_cfg.train_on_prompt, data_cfg.mask_history]).encode()).hexdigest()[:16]
    out = ds.map(fn, remove_columns=ds.column_names, num_proc=data_cfg.preprocessing_num_workers, desc="tokenizing",
                 new_fingerprint=fingerprint)
    if progress is not None and not in_process:
        progress(total, total)
    before = len(out)
    out = out.filter(lambda r: any(x != IGNORE_INDEX for x in r["labels"]), desc="dropping rows with no supervised token")
    if len(out) == 0:
        raise DataError(f"no example keeps a supervised token within cutoff_len {data_cfg.cutoff_len}; raise cutoff_len",
                        key="cutoff_len")
    if len(out) < before:
        log.warning("%d of %d examples have no supervised token within cutoff_len %d and were dropped",
                    before - len(out), before, data_cfg.cutoff_len)
    return out


def row_stats(parts: dict) -> dict:
    """Counts of the tokenized parts: examples, tokens, supervised tokens, and the longest rows' lengths."""
    lengths = [len(x) for x in parts["train"]["input_ids"]]
    return {**{f"{n}_examples": len(p) for n, p in parts.items()}, "train_tokens": sum(lengths),
            "train_supervised_tokens": sum(sum(1 for t in x if t != IGNORE_INDEX) for x in parts["train"]["labels"]),
            "train_longest": sorted(lengths, reverse=True)[:LONGEST_KEPT]}


def build(data_cfg, tokenizer, cache_dir: str | None = None, conversations=None, progress=None):
    """Tokenized {"train", "eval"?} datasets for SFT, from the cache when nothing changed.

    Args:
        data_cfg: the DataSection.
        tokenizer: with its chat template already set.
        cache_dir: cache root (default ~/.cache/tuneforge).
        conversations: the result of `load_conversations`, if already computed.
        progress: called as progress(done, total) while rows are tokenized.
    """
    attrs = registry.resolve(data_cfg.dataset, data_cfg.dataset_dir)

    def build_parts():
        ds, stats = conversations or load_conversations(data_cfg, attrs)
        parts = {name: tokenize(part, tokenizer, data_cfg, progress if name == "train" else None)
                 for name, part in split(ds, data_cfg.val_size, data_cfg.seed).items()}
        return parts, {"datasets": stats, **row_stats(parts)}

    return cache.cached(data_cfg, attrs, tokenizer, cache_dir, "data", build_parts, keys=("template", "train_on_prompt", "mask_history"))
