"""Plain text for continued pre-training (stage pt): text rows -> documents (tokenized, EOS at the end of each) ->
blocks of at most cutoff_len tokens, packed by TRL's best-fit-decreasing packer. A block's position ids restart at
every document, and the collator turns each document into its own packed example, so no token attends across
documents: a document's logits are the same in a block as alone."""

import hashlib
import json
import logging
import os

from tuneforge import TuneforgeError
from tuneforge.data import cache, registry
from tuneforge.data.errors import DataError
from tuneforge.data.formats import field_text
from tuneforge.data.loaders import Rows, read_text, data_files, load_rows
from tuneforge.data.pipeline import LONGEST_KEPT, mix, split

log = logging.getLogger(__name__)

TEXT_COLUMN = "text"  # the column read when the dataset_info.json entry names none (`columns: {prompt: text}`)
LAYOUT = 1  # bump when the block layout changes (it is part of the cache key)


# ---------------------------------------------------------------- text rows -> documents

def text_files(path: str) -> list[str]:
    """The plain-text files behind a dataset path: a `.txt` file, or the `.txt` files of a folder holding no other data."""
    if os.path.isfile(path):
        return [path] if path.lower().endswith(".txt") else []
    if data_files(path):
        return []
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(".txt") and not f.startswith("."))


def load_text_rows(attr: registry.DatasetAttr):
    """A dataset's rows: `.txt` files give one document a line (as LLaMA-Factory and `datasets`' text loader read
    them; a blank line is an empty document), everything else goes through the row loader."""
    files = text_files(attr.path)
    if not files:
        return load_rows(attr)
    rows = Rows([{TEXT_COLUMN: line} for f in files for line in read_text(f, attr.name).splitlines()])
    return rows.select(range(min(attr.num_samples, len(rows)))) if attr.num_samples is not None else rows


def text_column(attr: registry.DatasetAttr, columns: list[str]) -> str:
    """The column holding the text (`columns: {prompt: ...}`, default `text`), checked against the file.

    Raises:
        DataError: for a ranking or conversation dataset, or when the file has no such column.
    """
    if attr.ranking or attr.formatting in ("sharegpt", "openai"):
        kind = "a ranking (preference)" if attr.ranking else f"a {attr.formatting} conversation"
        raise DataError(f"dataset `{attr.name}` is {kind} dataset; stage pt reads plain text: register a text file with "
                        f"`columns: {{prompt: text}}` in dataset_info.json")
    column = attr.columns.get("prompt", TEXT_COLUMN)
    if column not in columns:
        how = "its `prompt` column in dataset_info.json" if "prompt" in attr.columns else "the default for stage pt"
        raise DataError(f"dataset `{attr.name}` has no column `{column}` ({how}); its columns are {columns}. Name the text "
                        f"column with `columns: {{prompt: <column>}}` in its dataset_info.json entry")
    return column


def to_documents(rows, attr: registry.DatasetAttr, strict: bool) -> tuple[list[str], dict]:
    """The non-empty texts of `rows`; empty ones are skipped and counted, wrongly typed ones reported as bad rows.

    Raises:
        DataError: naming the dataset, row and column, when `strict` is set and a row is bad, or no row has text.
    """
    column = text_column(attr, rows.column_names)
    texts, empty, bad, first_bad = [], 0, 0, None
    for i, row in enumerate(rows):
        try:
            text = field_text(row.get(column), column)
        except ValueError as e:
            bad += 1
            first_bad = first_bad or f"row {i}: {e}"
            if strict:
                raise DataError(f"dataset `{attr.name}` {first_bad} (strict: true stops at the first bad row; fix the row or "
                                f"drop strict to skip bad rows)") from None
            continue
        if text:
            texts.append(text)
        else:
            empty += 1
    if not texts:
        why = f"; first bad row: {first_bad}" if first_bad else ""
        raise DataError(f"dataset `{attr.name}` has no usable text in column `{column}`: {len(rows)} rows, {empty} empty, "
                        f"{bad} not text{why}")
    if empty:
        log.info("dataset `%s`: skipped %d empty documents of %d rows", attr.name, empty, len(rows))
    if bad:
        log.warning("dataset `%s`: skipped %d of %d rows whose `%s` is not text; first: %s", attr.name, bad, len(rows),
                    column, first_bad)
    return texts, {"rows": len(rows), "documents": len(texts), "empty": empty, "skipped": bad, "first_skipped": first_bad}


def load_documents(data_cfg, attrs):
    """Every dataset's documents (at most max_samples rows each), mixed: (Dataset with a `text` column, stats)."""
    from datasets import Dataset

    parts, stats = [], {}
    for attr in attrs:
        rows = load_text_rows(attr)
        if data_cfg.max_samples is not None:
            rows = rows.select(range(min(data_cfg.max_samples, len(rows))))
        texts, stats[attr.name] = to_documents(rows, attr, data_cfg.strict)
        parts.append(Dataset.from_dict({TEXT_COLUMN: texts}))
    return mix(parts, data_cfg), stats


# ---------------------------------------------------------------- documents -> tokens -> blocks

def tokenize_documents(ds, tokenizer, num_proc: int | None = None, progress=None):
    """Each text as the tokenizer frames it (its BOS, if it adds one) with EOS appended, the end-of-document mark.
    `progress(done, total)` is called as documents are tokenized in this process (not with several workers).

    Raises:
        TuneforgeError (key model_name_or_path): when the tokenizer has no EOS token to separate documents with.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TuneforgeError("stage pt ends every document with the EOS token, and this tokenizer has none; use a model "
                             "whose tokenizer defines eos_token", key="model_name_or_path")
    total, done = len(ds), [0]
    in_process = progress is not None and (num_proc or 1) <= 1

    def fn(batch):
        ids = [x if x[-1:] == [eos] else x + [eos] for x in tokenizer(batch[TEXT_COLUMN])["input_ids"]]
        if in_process:
            done[0] += len(ids)
            progress(done[0], total)
        return {"input_ids": ids}

    # the fingerprint names what the result depends on (the progress callback in `fn` cannot be hashed)
    fingerprint = hashlib.sha256(json.dumps([ds._fingerprint, cache.tokenizer_fingerprint(tokenizer)]).encode()).hexdigest()[:16]
    out = ds.map(fn, batched=True, remove_columns=ds.column_names, num_proc=num_proc, desc="tokenizing",
                 new_fingerprint=fingerprint)
    if progress is not None and not in_process:
        progress(total, total)
    return out


def _positions(batch):
    """position_ids restarting at every document of a packed block (from TRL's `seq_lengths`)."""
    return {"position_ids": [[p for n in lengths for p in range(n)] for lengths in batch["seq_lengths"]]}


def _pieces(batch, cutoff_len: int):
    """Unpacked: one row per document, a longer one split into cutoff_len pieces."""
    rows = [ids[i:i + cutoff_len] for ids in batch["input_ids"] for i in range(0, len(ids), cutoff_len)]
    return {"input_ids": rows, "position_ids": [list(range(len(r))) for r in rows]}


def to_blocks(docs, cutoff_len: int, packing: bool):
    """Rows of `input_ids` and `position_ids` (restarting per document) of at most cutoff_len tokens.

    Packed, documents share blocks by best fit (TRL's `pack_dataset`, strategy `bfd_split`); a document longer than
    cutoff_len is split into pieces that are documents of their own. Unpacked, each document (or piece) is one row.
    """
    if not packing:
        return docs.map(_pieces, batched=True, fn_kwargs={"cutoff_len": cutoff_len}, desc="splitting documents")
    from trl import pack_dataset

    packed = pack_dataset(docs, cutoff_len, strategy="bfd_split", map_kwargs={"desc": "packing documents"})
    return packed.map(_positions, batched=True, remove_columns=["seq_lengths"], desc="document positions")


def block_stats(name: str, docs, blocks, cutoff_len: int) -> dict:
    """Counts of one part: documents, blocks (its examples), tokens, tokens with a loss, the longest blocks."""
    lengths = [len(x) for x in blocks["input_ids"]]
    starts = sum(p.count(0) for p in blocks["position_ids"])  # one per document or piece: its first token has no loss
    stats = {f"{name}_documents": len(docs), f"{name}_examples": len(blocks), f"{name}_tokens": sum(lengths)}
    if name == "train":
        stats.update({"train_supervised_tokens": sum(lengths) - starts,
                      "train_documents_split": sum(1 for x in docs["input_ids"] if len(x) > cutoff_len),
                      "train_longest": sorted(lengths, reverse=True)[:LONGEST_KEPT]})
    return stats


def build(data_cfg, tokenizer, cache_dir: str | None = None, progress=None):
    """Tokenized {"train", "eval"?} blocks for stage pt, from the cache when nothing changed.

    Documents are split into train and eval (val_size) before packing, so held-out documents are never trained on.

    Args:
        data_cfg: the DataSection (dataset, cutoff_len, max_samples, val_size, packing, mixing, strict, workers).
        tokenizer: the model's tokenizer.
        cache_dir: cache root (default ~/.cache/tuneforge).
        progress: called as progress(done, total) while training documents are tokenized.
    """
    attrs = registry.resolve(data_cfg.dataset, data_cfg.dataset_dir)

    def build_parts():
        ds, per_dataset = load_documents(data_cfg, attrs)
        parts, stats = {}, {"datasets": per_dataset}
        for name, part in split(ds, data_cfg.val_size, data_cfg.seed).items():
            docs = tokenize_documents(part, tokenizer, data_cfg.preprocessing_num_workers, progress if name == "train" else None)
            parts[name] = to_blocks(docs, data_cfg.cutoff_len, bool(data_cfg.packing))
            stats.update(block_stats(name, docs, parts[name], data_cfg.cutoff_len))
        log.info("pt data: %d documents in %d blocks of at most %d tokens (%d tokens)", stats["train_documents"],
                 stats["train_examples"], data_cfg.cutoff_len, stats["train_tokens"])
        return parts, stats

    files = [[f, os.stat(f).st_size, os.stat(f).st_mtime_ns] for a in attrs for f in text_files(a.path)]
    return cache.cached(data_cfg, attrs, tokenizer, cache_dir, "text", build_parts, keys=("packing",), stage_data="text",
                        layout=LAYOUT, text_files=files)


# ---------------------------------------------------------------- blocks -> batches

class DocumentCollator:
    """Blocks -> their documents -> the SFT collator (data/collator.py). Packed: the batch's documents in one row,
    positions restarting and attention stopping at each (the packed SDPA or a block-diagonal mask). Unpacked: one
    padded row per block, which holds one document. Every token is a label; the first of each document has nothing
    before it to be predicted from and is masked."""

    def __init__(self, tokenizer, packing: bool):
        from tuneforge.data.collator import build_collator

        self.collate = build_collator(tokenizer, packing)

    def __call__(self, blocks: list[dict]):
        docs = []
        for block in blocks:
            ids, positions = list(block["input_ids"]), list(block["position_ids"])
            starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
            docs += [{"input_ids": ids[a:b], "labels": ids[a:b], "attention_mask": [1] * (b - a)}
                     for a, b in zip(starts, starts[1:])]
        return self.collate(docs)
