"""The dataset registry: LLaMA-Factory's `dataset_info.json` (file_name, formatting, columns, tags, ranking)."""

import json
import os
from dataclasses import dataclass, field

from tuneforge.config.errors import did_you_mean
from tuneforge.data.errors import DataError

FORMATS = ("alpaca", "sharegpt", "openai", "auto")
DEFAULT_COLUMNS = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output", "history": None, "system": None},
    "sharegpt": {"messages": "conversations", "system": None, "tools": "tools"},
    "openai": {"messages": "messages", "system": None, "tools": "tools"},
}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
               "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system"}
KNOWN_ENTRY_KEYS = {"file_name", "formatting", "columns", "tags", "ranking", "hf_hub_url", "ms_hub_url", "om_hub_url",
                    "script_url", "cloud_file_name", "subset", "split", "folder", "num_samples", "load_from"}


@dataclass
class DatasetAttr:
    """One dataset to load: where it is, its format, and how its columns and role tags are named."""

    name: str
    path: str  # file or folder, absolute
    formatting: str = "auto"
    ranking: bool = False
    columns: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    tags_given: bool = False
    split: str = "train"
    num_samples: int | None = None

    def column(self, key: str) -> str | None:
        fmt = self.formatting if self.formatting in DEFAULT_COLUMNS else "alpaca"
        return self.columns.get(key, DEFAULT_COLUMNS[fmt].get(key))

    def explicit(self, key: str) -> bool:
        return key in self.columns


def read_dataset_info(dataset_dir: str) -> dict | None:
    """The parsed `dataset_info.json` of a folder, or None if it has none."""
    path = os.path.join(dataset_dir, "dataset_info.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
    except json.JSONDecodeError as e:
        raise DataError(f"`{path}` is not valid JSON: {e}") from None
    if not isinstance(info, dict):
        raise DataError(f"`{path}` must map dataset names to entries")
    return info


def _from_entry(name: str, entry: dict, dataset_dir: str) -> DatasetAttr:
    where = f"dataset `{name}` in {os.path.join(dataset_dir, 'dataset_info.json')}"
    if not isinstance(entry, dict):
        raise DataError(f"{where} must be a mapping with at least `file_name`")
    unknown = sorted(set(entry) - KNOWN_ENTRY_KEYS)
    if unknown:
        raise DataError(f"{where} has unknown key `{unknown[0]}`{did_you_mean(unknown[0], KNOWN_ENTRY_KEYS)}")
    if "file_name" not in entry:
        remote = next((k for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name") if k in entry), None)
        if remote:
            raise DataError(f"{where} comes from `{remote}`; tuneforge runs offline: download it into {dataset_dir} and register it with `file_name`")
        raise DataError(f"{where} has no `file_name`; add the file's name relative to {dataset_dir}")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATS:
        raise DataError(f"{where}: formatting `{formatting}` is not supported{did_you_mean(formatting, FORMATS)}; use alpaca, sharegpt or openai")
    path = os.path.join(dataset_dir, entry["file_name"])
    if not os.path.exists(path):
        raise DataError(f"{where}: file_name `{entry['file_name']}` does not exist in {dataset_dir}")
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    for key, value in (("columns", columns), ("tags", tags)):
        if not isinstance(value, dict):
            raise DataError(f"{where}: `{key}` must be a mapping")
    bad_tags = sorted(set(tags) - set(SHAREGPT_TAGS))
    if bad_tags:
        raise DataError(f"{where}: unknown tag `{bad_tags[0]}`{did_you_mean(bad_tags[0], SHAREGPT_TAGS)}")
    return DatasetAttr(name=name, path=os.path.abspath(path), formatting=formatting, ranking=bool(entry.get("ranking", False)),
                       columns=dict(columns), tags=dict(tags), tags_given=bool(tags), split=entry.get("split", "train"),
                       num_samples=entry.get("num_samples"))


def resolve(names: list[str], dataset_dir: str) -> list[DatasetAttr]:
    """Look each name up in `dataset_dir/dataset_info.json`, or take it as a file path; collect every problem.

    Raises:
        DataError: naming `dataset`/`dataset_dir` and the fix, for each name that cannot be found.
    """
    info = read_dataset_info(dataset_dir) if os.path.isdir(dataset_dir) else None
    attrs, problems = [], []
    for name in names:
        try:
            if info is not None and name in info:
                attrs.append(_from_entry(name, info[name], dataset_dir))
                continue
            for candidate in (os.path.join(dataset_dir, name), name):
                if os.path.exists(candidate):
                    attrs.append(DatasetAttr(name=name, path=os.path.abspath(candidate)))
                    break
            else:
                if info is None:
                    problems.append(f"dataset `{name}` is neither a file nor registered: no dataset_info.json in dataset_dir `{dataset_dir}`")
                else:
                    problems.append(f"dataset `{name}` is not in {os.path.join(dataset_dir, 'dataset_info.json')}"
                                    f"{did_you_mean(name, info)}; registered: {', '.join(sorted(info)) or 'none'}")
        except DataError as e:
            problems.append(str(e))
    if problems:
        raise DataError("\n".join(problems))
    return attrs
