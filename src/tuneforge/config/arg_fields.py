"""The field table of a stage's arguments class (TrainingArguments or a TRL config), cached on disk per installed
library version so that validating a config and `describe()` do not import transformers (2-5 s with peft and
bitsandbytes behind it): `tuneforge estimate` and config checks take ~0.25 CPU seconds instead of ~7.

A table holds each field's name, annotation, default and help. It lives in <cache>/arg_fields/<key>.json, where the
key covers the versions of python, transformers, trl and accelerate, the source of the module that builds the class,
and this file's FORMAT. A missing, stale or unreadable table is rebuilt from the live class transparently; a class
whose annotations or defaults the table cannot write (or a builder defined inside a function, such as a test's
lambda) is always read live. Enum annotations come back as `enum.Enum` types with the same values, module and name,
so coercion and its error messages are the same; `tests/test_startup.py` proves every registered stage's cached
table equals the live one.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import json
import operator
import os
import sys
import types
import typing
from typing import Any, Callable, Literal, get_args, get_origin

FORMAT = 1
LIBRARIES = ("transformers", "trl", "accelerate")
_BUILTINS = {t.__name__: t for t in (bool, int, float, str, dict, list, tuple, set, bytes, object)}


class Uncacheable(ValueError):
    """An annotation or default the table cannot write exactly; the class is then read live."""


class CachedField:
    """What validation and `describe()` read of a `dataclasses.Field`: name, type, default, default_factory, metadata
    (a plain class: a dataclass cannot default a field to `dataclasses.MISSING`)."""

    init = True

    def __init__(self, name: str, tp: Any, metadata: dict):
        self.name, self.type, self.metadata = name, tp, metadata
        self.default = self.default_factory = dataclasses.MISSING

    def __repr__(self) -> str:
        return f"CachedField({self.name!r}, {self.type!r})"


# -- annotations <-> JSON ---------------------------------------------------------------------------------------------

def encode_type(tp: Any) -> Any:
    """An annotation as JSON; Uncacheable for a form this table does not write."""
    if tp is type(None):
        return {"none": True}
    if tp is Any:
        return {"any": True}
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return {"union": [encode_type(a) for a in get_args(tp)], "pep604": origin is types.UnionType}
    if origin is Literal:
        values = list(get_args(tp))
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise Uncacheable(f"Literal of {values!r}")
        return {"literal": values}
    if origin in (list, dict, tuple, set):
        return {"generic": origin.__name__, "args": [encode_type(a) for a in get_args(tp)]}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        members = [[m.name, m.value] for m in tp]
        if not all(isinstance(v, (bool, int, float, str)) for _, v in members):
            raise Uncacheable(f"enum {tp.__qualname__} with non-scalar values")
        return {"enum": members, "module": tp.__module__, "qualname": tp.__qualname__, "str": issubclass(tp, str)}
    if isinstance(tp, type) and tp.__module__ == "builtins" and tp.__name__ in _BUILTINS:
        return {"type": tp.__name__}
    if isinstance(tp, type) and origin is None:
        # a class coercion does not know (it passes values through) and describe() shows as `any`
        return {"opaque": tp.__qualname__, "module": tp.__module__}
    raise Uncacheable(f"annotation {tp!r}")


@functools.cache
def _rebuilt_class(kind: str, module: str, qualname: str, members: tuple = (), is_str: bool = False) -> type:
    if kind == "enum":
        return enum.Enum(qualname.rsplit(".", 1)[-1], [list(m) for m in members], module=module, qualname=qualname,
                         type=str if is_str else None)
    return type(qualname.rsplit(".", 1)[-1], (), {"__module__": module, "__qualname__": qualname})


def decode_type(data: Any) -> Any:
    if "none" in data:
        return type(None)
    if "any" in data:
        return Any
    if "union" in data:
        args = [decode_type(a) for a in data["union"]]
        return functools.reduce(operator.or_, args) if data["pep604"] else typing.Union[tuple(args)]
    if "literal" in data:
        return Literal[tuple(data["literal"])]
    if "generic" in data:
        origin, args = _BUILTINS[data["generic"]], [decode_type(a) for a in data["args"]]
        return origin[tuple(args)] if args else origin
    if "enum" in data:
        return _rebuilt_class("enum", data["module"], data["qualname"], tuple(tuple(m) for m in data["enum"]), data["str"])
    if "opaque" in data:
        return _rebuilt_class("opaque", data["module"], data["opaque"])
    return _BUILTINS[data["type"]]


def _scalar_or_container(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(_scalar_or_container(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _scalar_or_container(v) for k, v in value.items())
    return False


def encode_fields(fields: dict[str, Any]) -> list[dict]:
    """Fields (live `dataclasses.Field`s or CachedFields) as JSON rows; Uncacheable when one cannot be written."""
    rows = []
    for name, f in fields.items():
        row: dict[str, Any] = {"name": name, "type": encode_type(f.type)}
        if f.default is not dataclasses.MISSING:
            if not _scalar_or_container(f.default) or isinstance(f.default, enum.Enum):
                raise Uncacheable(f"default of {name}: {f.default!r}")
            row["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            if not isinstance(value, (list, dict)) or not _scalar_or_container(value):
                raise Uncacheable(f"default_factory of {name}: {value!r}")
            row["factory"] = value
        if "help" in f.metadata:
            if not isinstance(f.metadata["help"], str):
                raise Uncacheable(f"help of {name}")
            row["help"] = f.metadata["help"]
        rows.append(row)
    return rows


def decode_fields(rows: list[dict]) -> dict[str, CachedField]:
    out = {}
    for row in rows:
        f = CachedField(row["name"], decode_type(row["type"]), metadata={"help": row["help"]} if "help" in row else {})
        if "default" in row:
            f.default = row["default"]
        elif "factory" in row:
            f.default_factory = functools.partial(copy.deepcopy, row["factory"])
        out[row["name"]] = f
    return out


# -- the live class and the cache -------------------------------------------------------------------------------------

def live_fields(cls: type) -> dict[str, dataclasses.Field]:
    """Every init field of `cls` by name, with its annotation resolved."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.init:
            f.type = hints.get(f.name, f.type)
            out[f.name] = f
    return out


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def cache_key(make_class: Callable[[], type]) -> str | None:
    """The table's key for the builder `make_class`, or None when it cannot be cached (defined inside a function, or
    in a module without a source file)."""
    module, qualname = getattr(make_class, "__module__", None), getattr(make_class, "__qualname__", "")
    source = getattr(sys.modules.get(module or ""), "__file__", None)
    if not source or "<" in qualname or not os.path.isfile(source):
        return None
    with open(source, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    payload = [FORMAT, sys.version_info[:2], [_version(n) for n in LIBRARIES], module, qualname, digest]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:24]


def cache_dir() -> str:
    from tuneforge.data.cache import cache_root

    return os.path.join(cache_root(None), "arg_fields")


def _read(path: str) -> dict[str, CachedField] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return decode_fields(json.load(fh)["fields"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing or unreadable: rebuilt from the live class


def _write(path: str, rows: list[dict], make_class: Callable) -> None:
    body = {"format": FORMAT, "builder": f"{make_class.__module__}.{make_class.__qualname__}",
            "libraries": {n: _version(n) for n in LIBRARIES}, "fields": rows}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(body, fh)
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs the next run the import
        try:
            os.remove(tmp)
        except OSError:
            pass


_MEMO: dict[Callable, dict] = {}


def fields_of(make_class: Callable[[], type]) -> dict[str, Any]:
    """The init fields of the class `make_class()` returns, by name: from the cached table when it is there and
    current, else from the live class (then written to the cache)."""
    if make_class in _MEMO:
        return _MEMO[make_class]
    key = cache_key(make_class)
    path = os.path.join(cache_dir(), f"{key}.json") if key else None
    fields = _read(path) if path else None
    if fields is None:
        fields = live_fields(make_class())
        if path:
            try:
                _write(path, encode_fields(fields), make_class)
            except Uncacheable:
                pass
    _MEMO[make_class] = fields
    return fields
