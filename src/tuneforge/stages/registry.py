"""The stage registry: one record per training stage (`stage: sft`), found by name. A record says which arguments
class its `train` keys come from (TrainingArguments or a TRL config class), what data it reads, how it builds its
data and trainer, and whether its rows pack; config validation, `describe()`, preflight and the Board all read it."""

import re
from dataclasses import dataclass, field
from typing import Any, Callable

# The kinds of data a stage reads (the data pipeline turns dataset_info.json entries into one of these).
DATA_KINDS = ("text", "supervised", "pairwise", "unpaired", "prompt")


def _training_arguments() -> type:
    from transformers import TrainingArguments

    return TrainingArguments


@dataclass(frozen=True)
class Stage:
    """A training stage.

    build_data(cfg, tokenizer, progress) -> (datasets {"train", "eval"?}, stats, collator): tokenized rows of
        `data_kind`; `stats["train_longest"]` lists the longest rows' token counts (the pre-run memory check reads it).
    build_trainer(cfg, model, tokenizer, datasets, collator, callbacks) -> a transformers/TRL Trainer, not trained yet.
    args_class() -> the arguments class whose field names are this stage's `train` keys (imported lazily).
    data_kind: one of DATA_KINDS.
    packs: whether rows of this stage may be packed (`packing` defaults to method.packs and stage.packs).
    streams: whether build_data honours `streaming: true` (read lazily, never held whole).
    train_defaults: `train` values this stage sets unless the user does (logged by config.resolve).
    memory(x, cfg) -> x: how the stage changes the estimator's input (a preference pair doubles the rows; a frozen
        reference sets `x.reference_copies`; generation caches or a value head go in `x.extra`), or None.
    load_model(cfg, folder) -> model: how the stage loads its model (default: the causal LM with the method applied,
        stages.common.load_model); e.g. a reward model with a scalar head.
    llamafactory_names: LLaMA-Factory key -> (this stage's train key, convert or None), applied when this stage is
        chosen (`pref_beta` -> `beta`); the key a user wrote is named in errors.
    validate(cfg) -> [(key, message), ...]: settings this stage cannot honour, checked when a training config loads
        (with every other config problem, before anything is read or loaded).
    help: one line for `--help-keys` and the Board.
    """

    name: str
    build_data: Callable[..., Any]
    build_trainer: Callable[..., Any]
    args_class: Callable[[], type] = _training_arguments
    data_kind: str = "supervised"
    packs: bool = True
    streams: bool = False
    train_defaults: dict = field(default_factory=dict)
    memory: Callable[[Any, Any], Any] | None = None
    load_model: Callable[[Any, str], Any] | None = None
    llamafactory_names: dict = field(default_factory=dict)
    validate: Callable[[Any], list] | None = None
    help: str = ""


STAGES: dict[str, Stage] = {}


def register_stage(name: str, build_data, build_trainer, **facts) -> Stage:
    """Register a stage under a lowercase name; duplicates and unknown data kinds are refused."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"stage name `{name}` must be lowercase letters, digits and underscores")
    if name in STAGES:
        raise ValueError(f"stage `{name}` is already registered")
    kind = facts.get("data_kind", "supervised")
    if kind not in DATA_KINDS:
        raise ValueError(f"stage `{name}`: data_kind `{kind}` is not one of {', '.join(DATA_KINDS)}")
    STAGES[name] = Stage(name, build_data, build_trainer, **facts)
    return STAGES[name]


def unregister_stage(name: str) -> None:
    """Remove a stage (tests that register a toy stage clean up with this)."""
    STAGES.pop(name, None)


def get(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"stage `{name}` is not registered; available: {', '.join(sorted(STAGES))}") from None
