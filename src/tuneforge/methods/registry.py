"""The method registry: one line per method, found by `finetuning_type`."""

import re
from dataclasses import dataclass
from typing import Any, Callable

from tuneforge.config import register_section


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: its config section and three small functions.

    apply(model, cfg) -> model: decide which parameters train (wrap with adapters, freeze the rest).
    param_groups(model, cfg) -> list[dict] | None: optimizer parameter groups, or None for the default.
    callbacks(cfg) -> list[TrainerCallback]: callbacks the method needs during training.
    """

    name: str
    section: type | None
    apply: Callable[[Any, Any], Any]
    param_groups: Callable[[Any, Any], list[dict] | None]
    callbacks: Callable[[Any], list]


METHODS: dict[str, Method] = {}


def _no_groups(model, cfg):
    return None


def _no_callbacks(cfg):
    return []


def register_method(name: str, section: type | None, apply, param_groups=_no_groups, callbacks=_no_callbacks) -> None:
    """Register a method under a lowercase name; duplicates are refused."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"method name `{name}` must be lowercase letters, digits and underscores")
    if name in METHODS:
        raise ValueError(f"method `{name}` is already registered")
    if section is not None:
        register_section(name, section)
    else:
        register_section(name, _empty_section(name))
    METHODS[name] = Method(name, section, apply, param_groups, callbacks)


def _empty_section(name: str) -> type:
    from dataclasses import make_dataclass

    cls = make_dataclass(f"{name.title()}Section", [])
    cls.validate = lambda self: []
    return cls


def get(name: str) -> Method:
    """The method registered as `name`."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"finetuning_type `{name}` is not registered; choose one of {', '.join(sorted(METHODS))}") from None
