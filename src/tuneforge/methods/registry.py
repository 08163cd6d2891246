"""The method registry: one line per method, found by `finetuning_type`. Each entry carries the method's facts
(adapter or not, quantizable base, packing, its config section with the defaults, how the estimator counts it,
what `--fit` tries), so no other module names a method."""

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


def _no_save(model, output_dir, cfg) -> bool:
    return False


@dataclass(frozen=True)
class FitCandidate:
    """One configuration `--fit` tries for a method: a label, the settings it changes, its speed per token
    relative to LoRA (1.0), measured by benchmarks/methods.py."""

    label: str
    settings: dict
    speed: float


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: its config section, a few small functions (all but `apply` optional) and its facts.

    apply(model, cfg) -> model: decide which parameters train (wrap with adapters, freeze the rest).
    optimizer(model, cfg, args) -> Optimizer | None: a method-specific optimizer (LoRA+ groups, LISA), or None.
    callbacks(cfg) -> list[TrainerCallback]: callbacks the method needs during training (LISA's layer switching).
    training_args(cfg) -> dict: TrainingArguments values the method sets (GaLore's optimizer).
    save(model, output_dir, cfg) -> bool: save the trained weights itself (PiSSA's conversion), or False.
    llamafactory(flat) -> (flat, notes): translate LLaMA-Factory's switches for this method (`use_galore`), or None.
    memory(shape, x) -> memory.Footprint: what the method trains and keeps, for the estimator; None: not countable
        (the estimate is then marked unknown, never a crash).
    packs: whether packed rows stay exact with this method (`packing` defaults to it).
    adapter: trains a peft adapter over a frozen base (takes `adapter_name_or_path`, saves an adapter).
    quantizable: accepts a 4/8-bit quantized base (`quantization_bit`).
    fit: the configurations `tuneforge estimate --fit` tries for this method.
    help: one line for `--help-keys` and the Board.
    """

    name: str
    section: type | None
    apply: Callable[[Any, Any], Any]
    optimizer: Callable[[Any, Any, Any], Any] = _none
    callbacks: Callable[[Any], list] = _no_callbacks
    training_args: Callable[[Any], dict] = _no_args
    save: Callable[[Any, str, Any], bool] = _no_save
    llamafactory: Callable[[dict], tuple[dict, list[str]]] | None = None
    memory: Callable[[Any, Any], Any] | None = None
    packs: bool = True
    adapter: bool = False
    quantizable: bool = False
    fit: tuple[FitCandidate, ...] = ()
    help: str = ""


HOOKS = {"optimizer", "callbacks", "training_args", "save", "llamafactory", "memory", "packs", "adapter", "quantizable", "fit", "help"}
METHODS: dict[str, Method] = {}


def register_method(name: str, section: type | None, apply, **hooks) -> Method:
    """Register a method under a lowercase name; duplicates are refused. `hooks` are Method's optional fields."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"method name `{name}` must be lowercase letters, digits and underscores")
    if name in METHODS:
        raise ValueError(f"method `{name}` is already registered")
    unknown = set(hooks) - HOOKS
    if unknown:
        raise ValueError(f"method `{name}`: unknown hook(s) {', '.join(sorted(unknown))}")
    hooks["fit"] = tuple(FitCandidate(*c) if not isinstance(c, FitCandidate) else c for c in hooks.get("fit", ()))
    register_section(name, section if section is not None else _empty_section(name))
    METHODS[name] = Method(name, section, apply, **hooks)
    return METHODS[name]


def unregister_method(name: str) -> None:
    """Remove a method and its section (tests that register a toy method clean up with this)."""
    from tuneforge.config.registry import METHOD_SECTIONS

    METHODS.pop(name, None)
    METHOD_SECTIONS.pop(name, None)


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


def names(adapter: bool | None = None, quantizable: bool | None = None) -> list[str]:
    """Registered method names, optionally only adapters or only those taking a quantized base."""
    return sorted(n for n, m in METHODS.items()
                  if (adapter is None or m.adapter == adapter) and (quantizable is None or m.quantizable == quantizable))
