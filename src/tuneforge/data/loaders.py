"""Read local json, jsonl, csv and parquet files (or a folder of them) into a `datasets.Dataset`."""

import os

from tuneforge.data.errors import DataError
from tuneforge.data.registry import DatasetAttr

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


def data_files(path: str) -> list[str]:
    """The data files behind a dataset path (one file, or every supported file in a folder)."""
    if os.path.isfile(path):
        return [path]
    files = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if os.path.splitext(f)[1].lower() in BUILDERS and not f.startswith("."))
    return files


def load_rows(attr: DatasetAttr):
    """Load a dataset's rows. Raises DataError naming the file when it cannot be read."""
    from datasets import load_dataset

    files = data_files(attr.path)
    if not files:
        raise DataError(f"dataset `{attr.name}`: no json, jsonl, csv or parquet files in `{attr.path}`")
    exts = {os.path.splitext(f)[1].lower() for f in files}
    builders = {BUILDERS.get(e) for e in exts}
    if None in builders:
        raise DataError(f"dataset `{attr.name}`: `{files[0]}` is not json, jsonl, csv or parquet")
    if len(builders) > 1:
        raise DataError(f"dataset `{attr.name}`: folder `{attr.path}` mixes file types ({', '.join(sorted(exts))}); keep one type per dataset")
    try:
        ds = load_dataset(builders.pop(), data_files=files, split="train")
    except Exception as e:  # datasets raises many types for unreadable files
        raise DataError(f"dataset `{attr.name}`: cannot read `{attr.path}`: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if attr.num_samples is not None:
        ds = ds.select(range(min(attr.num_samples, len(ds))))
    return ds
