"""Helpers to declare config fields with help text and to coerce YAML/CLI values to field types."""

import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin


def field(default: Any = dataclasses.MISSING, help: str = "", **kw) -> Any:  # noqa: A002
    """A dataclass field whose `help` the CLI and the Board show."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


YAML_BOOL_WORDS = {True: ("on", "yes", "true"), False: ("off", "no", "false")}


def _parse_scalar(text: str) -> Any:
    """Read a `key=value` override's value the way YAML would (`1e-4`, `true`, `[a, b]`)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def coerce(value: Any, tp: Any) -> Any:
    """Convert `value` to annotation `tp`; raise ValueError with a short reason if it cannot."""
    if isinstance(value, str) and tp is not str:
        parsed = _parse_scalar(value)
        if not isinstance(parsed, str):
            value = parsed
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads a bare off/on/no/yes as a boolean: back to the word a choice spells
            value = next((c for c in choices if isinstance(c, str) and c in YAML_BOOL_WORDS[value]), value)
        if value in choices:
            return value
        raise ValueError(f"must be one of {', '.join(map(str, choices))} (got {value!r})")
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [coerce(v, inner) for v in value]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"must be true or false (got {value!r})")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"must be an integer (got {value!r})")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number (got {value!r})")
        return float(value)
    if tp is str:
        if value is None:  # `key:` or `key=` with nothing after it; never the text "None"
            raise ValueError("has no value; give one or remove the key")
        if isinstance(value, (dict, list)):
            raise ValueError(f"must be a string (got {value!r})")
        return str(value)
    if tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping (got {value!r})")
        return value
    return value


def section_fields(cls) -> dict[str, dataclasses.Field]:
    """The fields of a section dataclass with their annotations resolved."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out
