"""The method registry: one line per method, found by `finetuning_type`."""

import re
from dataclasses import dataclass
from typing import Any, Callable

from tuneforge.config import register_section


def _none(*args):
    return None


def _no_callbacks(cfg):
    return []


def _no_args(cfg):
    return {}


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: its config section and a few small functions (all but `apply` optional).

    apply(model, cfg) -> model: decide which parameters train (wrap with adapters, freeze the rest).
    optimizer(model, cfg, args) -> Optimizer | None: a method-specific optimizer (LoRA+ groups, LISA), or None.
    callbacks(cfg) -> list[TrainerCallback]: callbacks the method needs during training (LISA's layer switching).
    training_args(cfg) -> dict: TrainingArguments values the method sets (GaLore's optimizer).
    save(model, output_dir, cfg) -> bool: save the trained weights itself (PiSSA's conversion), or False.
    packs: whether packed rows stay exact with this method (`packing` defaults to it).
    """

    name: str
    section: type | None
    apply: Callable[[Any, Any], Any]
    optimizer: Callable[[Any, Any, Any], Any] = _none
    callbacks: Callable[[Any], list] = _no_callbacks
    training_args: Callable[[Any], dict] = _no_args
    save: Callable[[Any, str, Any], bool] = lambda model, output_dir, cfg: False
    packs: bool = True


METHODS: dict[str, Method] = {}


def register_method(name: str, section: type | None, apply, **hooks) -> None:
    """Register a method under a lowercase name; duplicates are refused. `hooks` are Method's optional functions."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"method name `{name}` must be lowercase letters, digits and underscores")
    if name in METHODS:
        raise ValueError(f"method `{name}` is already registered")
    unknown = set(hooks) - {"optimizer", "callbacks", "training_args", "save", "packs"}
    if unknown:
        raise ValueError(f"method `{name}`: unknown hook(s) {', '.join(sorted(unknown))}")
    register_section(name, section if section is not None else _empty_section(name))
    METHODS[name] = Method(name, section, apply, **hooks)


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
