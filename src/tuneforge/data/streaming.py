"""Streaming (`streaming: true`) for corpora larger than memory: rows are read lazily from jsonl, json (a JSON array
or JSON Lines), csv and parquet files, converted and encoded with the same formats, templates and masks as the
in-memory path, and shuffled through a buffer of `buffer_size` examples. Nothing is cached or held whole: memory
stays flat as the file grows. `max_steps` is required (the length is unknown); `val_size` takes the first rows."""

import csv
import io
import itertools
import json
import logging
import os

from tuneforge.data import registry
from tuneforge.data.errors import DataError
from tuneforge.data.formats import CONVERTERS, check_columns, row_tools, stored
from tuneforge.data.loaders import BUILDERS, data_files
from tuneforge.data.templates import IGNORE_INDEX, encode

log = logging.getLogger(__name__)
CHUNK = 1 << 20  # characters read at a time from a JSON array


def _json_array(fh, path: str, name: str):
    """Objects of a JSON array, one at a time, reading the file in chunks."""
    decoder, buf, pos, started, line = json.JSONDecoder(), "", 0, False, 1
    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n,":
            line += buf[pos] == "\n"
            pos += 1
        if not started and pos < len(buf):
            if buf[pos] != "[":
                raise DataError(f"dataset `{name}`: `{path}` is not a JSON array or JSON Lines")
            started, pos = True, pos + 1
            continue
        if pos < len(buf) and buf[pos] == "]":
            return
        try:
            obj, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as e:
            more = fh.read(CHUNK)
            if not more:
                raise DataError(f"dataset `{name}`: `{path}` is not valid JSON near line {line}: {e.msg}") from None
            buf, pos = buf[pos:] + more, 0
            continue
        line += buf.count("\n", pos, end)
        pos = end
        yield obj
        if pos > CHUNK:
            buf, pos = buf[pos:], 0


def _file_rows(path: str, name: str):
    """Rows of one file, lazily; the same errors as the in-memory loader, with the line."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    if ext not in (".json", ".jsonl", ".csv"):
        raise DataError(f"dataset `{name}`: `{path}` cannot be streamed; streaming reads jsonl, json, csv and parquet files")
    with open(path, "rb") as raw:
        fh = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict")
        try:
            if ext == ".csv":
                yield from (dict(r) for r in csv.DictReader(fh))
                return
            first = fh.read(1)
            while first and first.isspace():
                first = fh.read(1)
            if ext == ".json" and first == "[":
                yield from _json_array(_Prefixed(first, fh), path, name)
                return
            for n, text in enumerate(itertools.chain([first + fh.readline()], fh), 1):
                if text.strip():
                    try:
                        row = json.loads(text)
                    except json.JSONDecodeError as e:
                        raise DataError(f"dataset `{name}`: `{path}` line {n} column {e.colno}: {e.msg}; fix that line "
                                        f"(JSON Lines: one object a line)") from None
                    if not isinstance(row, dict):
                        raise DataError(f"dataset `{name}`: `{path}` line {n} is {type(row).__name__}, not an object")
                    yield row
        except UnicodeDecodeError as e:
            raise DataError(f"dataset `{name}`: `{path}` is not UTF-8 text ({e.reason}); save it as UTF-8") from None


class _Prefixed:
    """A text file whose first character was already read."""

    def __init__(self, first: str, fh):
        self.first, self.fh = first, fh

    def read(self, n: int) -> str:
        if self.first:
            out, self.first = self.first + self.fh.read(n - 1), ""
            return out
        return self.fh.read(n)


def _columns(attr) -> list[str]:
    """The first row's columns (to check the registry's column mapping before training starts)."""
    for path in data_files(attr.path):
        for row in _file_rows(path, attr.name):
            return list(row)
    raise DataError(f"dataset `{attr.name}`: `{attr.path}` has no rows")


def examples(attr, data_cfg, tokenizer, counts: dict):
    """Encoded examples of one dataset, lazily; bad rows and rows with no supervised token are counted and skipped
    (`strict` stops at the first bad row)."""
    convert = CONVERTERS[attr.formatting]
    limit = data_cfg.max_samples
    n = 0
    for path in data_files(attr.path):
        for row in _file_rows(path, attr.name):
            if limit is not None and n >= limit:
                return
            n += 1
            try:
                messages, tools = convert(row, attr), row_tools(row, attr)
            except ValueError as e:
                counts["skipped"] += 1
                if data_cfg.strict:
                    raise DataError(f"dataset `{attr.name}` row {n - 1}: {e} (strict: true stops at the first bad row)") from None
                if counts["skipped"] == 1:
                    log.warning("dataset `%s` row %d skipped: %s (further bad rows are counted)", attr.name, n - 1, e)
                continue
            ids, labels = encode(tokenizer, [stored(m) for m in messages], data_cfg.cutoff_len, data_cfg.train_on_prompt,
                                 data_cfg.mask_history, json.dumps(tools) if tools else None)
            if all(x == IGNORE_INDEX for x in labels):
                counts["no_supervised"] += 1
                continue
            counts["rows"] += 1
            yield {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


def build(data_cfg, tokenizer) -> tuple[dict, dict]:
    """{"train": IterableDataset, "eval"?: Dataset} and stats (no lengths: the memory check takes the worst case).

    Raises:
        DataError: a dataset cannot be streamed (file type, columns), naming it and the fix.
    """
    from datasets import Dataset, IterableDataset

    from tuneforge.data.pipeline import mix

    attrs = registry.resolve(data_cfg.dataset, data_cfg.dataset_dir)
    for attr in attrs:
        exts = {os.path.splitext(f)[1].lower() for f in data_files(attr.path)}
        if not exts or not exts <= set(BUILDERS) - {".arrow"}:
            raise DataError(f"dataset `{attr.name}`: streaming reads jsonl, json, csv and parquet files (found "
                            f"{', '.join(sorted(exts)) or 'none'} in `{attr.path}`)")
        if attr.ranking:
            raise DataError(f"dataset `{attr.name}` is a ranking (preference) dataset; it is for stages rm or dpo, not sft")
        columns = _columns(attr)
        from tuneforge.data.formats import detect_format

        attr.formatting = detect_format(attr, columns)
        check_columns(attr, columns)
    counts = {a.name: {"rows": 0, "skipped": 0, "no_supervised": 0} for a in attrs}

    def stream(attr):
        return IterableDataset.from_generator(lambda: examples(attr, data_cfg, tokenizer, counts[attr.name]))

    train = mix([stream(a) for a in attrs], data_cfg)
    out: dict = {}
    if data_cfg.val_size:
        held = int(data_cfg.val_size)
        out["eval"] = Dataset.from_list(list(itertools.islice(iter(train), held)))
        train = train.skip(held)
    out["train"] = train.shuffle(seed=data_cfg.seed, buffer_size=data_cfg.buffer_size)
    return out, {"streaming": True, "datasets": counts}
