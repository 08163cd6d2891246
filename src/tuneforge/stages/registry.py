"""The stage registry: `stage: sft` -> its run(cfg) function."""

from typing import Callable

STAGES: dict[str, Callable] = {}


def register_stage(name: str, run: Callable) -> None:
    if name in STAGES:
        raise ValueError(f"stage `{name}` is already registered")
    STAGES[name] = run


def get(name: str) -> Callable:
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"stage `{name}` is not implemented yet; available: {', '.join(sorted(STAGES))}") from None
