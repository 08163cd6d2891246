"""Read local json, jsonl, csv and parquet files (or a folder of them) into rows. Text stays text: json and csv are
read with the standard library, row by row, so one row's types never change another's (the `datasets` JSON loader
types a mixed column as JSON and decodes every other row's text: "true" became True, "1e5" 100000.0)."""

import csv
import json
import os

from tuneforge.data.errors import DataError
from tuneforge.data.registry import DatasetAttr

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


class Rows:
    """Rows as they are in the file (dicts), with the small part of `datasets.Dataset`'s interface the pipeline uses."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    @property
    def column_names(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    def select(self, indices) -> "Rows":
        return Rows([self.rows[i] for i in indices])


def data_files(path: str) -> list[str]:
    """The data files behind a dataset path (one file, or every supported file in a folder)."""
    if os.path.isfile(path):
        return [path]
    files = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if os.path.splitext(f)[1].lower() in BUILDERS and not f.startswith("."))
    return files


def read_text(path: str, name: str) -> str:
    """A data file's text (UTF-8, a BOM dropped); a file that is not UTF-8 is a DataError naming dataset `name`."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"dataset `{name}`: `{path}` is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None


def _json_rows(path: str, name: str) -> list[dict]:
    text = read_text(path, name)
    rows: list = []
    if not path.lower().endswith(".jsonl") and text.lstrip().startswith("{"):
        try:  # one pretty-printed object is not a dataset; a .json of JSON Lines is read below
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict) and "\n" in text.strip():
            raise DataError(f"dataset `{name}`: `{path}` holds one JSON object; a dataset is a list of row objects "
                            f"(`[{{...}}, {{...}}]`) or JSON Lines (one object a line)")
    if path.lower().endswith(".jsonl") or not text.lstrip().startswith("["):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"dataset `{name}`: `{path}` line {n} column {e.colno}: {e.msg}; fix that line "
                                    f"(JSON Lines: one object a line)") from None
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"dataset `{name}`: `{path}` is not valid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"dataset `{name}`: `{path}` row {bad} is {type(rows[bad]).__name__}, not an object of named fields")
    return rows


def _csv_rows(path: str, name: str) -> list[dict]:
    text = read_text(path, name)
    try:
        return [dict(row) for row in csv.DictReader(text.splitlines())]
    except csv.Error as e:
        raise DataError(f"dataset `{name}`: `{path}` is not valid CSV: {e}") from None


def _arrow_rows(builder: str, files: list[str], attr: DatasetAttr):
    """Parquet or Arrow files as one `datasets.Dataset`, read with pyarrow (typed per column by the file itself)."""
    import pyarrow as pa
    from datasets import Dataset

    tables = []
    for f in files:
        try:
            if builder == "parquet":
                import pyarrow.parquet as pq

                tables.append(pq.read_table(f))
            else:
                with pa.memory_map(f) as source:
                    tables.append(pa.ipc.open_stream(source).read_all())
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"dataset `{attr.name}`: cannot read `{f}` as {builder}: {str(e).splitlines()[0]}") from None
    try:
        return Dataset(pa.concat_tables(tables, promote_options="default"))
    except pa.ArrowException as e:
        raise DataError(f"dataset `{attr.name}`: the {builder} files in `{attr.path}` have different columns: {e}") from None


def load_rows(attr: DatasetAttr):
    """Load a dataset's rows: `Rows` for json/jsonl/csv (every value as written), a `datasets.Dataset` for
    parquet/arrow (typed per column by the file itself). Raises DataError naming the file, line and column."""
    files = data_files(attr.path)
    if not files:
        raise DataError(f"dataset `{attr.name}`: no json, jsonl, csv or parquet files in `{attr.path}`")
    exts = {os.path.splitext(f)[1].lower() for f in files}
    builders = {BUILDERS.get(e) for e in exts}
    if None in builders:
        raise DataError(f"dataset `{attr.name}`: `{files[0]}` is not json, jsonl, csv or parquet")
    if len(builders) > 1:
        raise DataError(f"dataset `{attr.name}`: folder `{attr.path}` mixes file types ({', '.join(sorted(exts))}); keep one type per dataset")
    builder = builders.pop()
    if builder in ("json", "csv"):
        read = _json_rows if builder == "json" else _csv_rows
        ds = Rows([row for f in files for row in read(f, attr.name)])
    else:
        ds = _arrow_rows(builder, files, attr)
    if len(ds) == 0:
        raise DataError(f"dataset `{attr.name}`: `{attr.path}` has no rows; add rows to it or remove it from `dataset`")
    if attr.num_samples is not None:
        ds = ds.select(range(min(attr.num_samples, len(ds))))
    return ds
