"""The `train` section: any `transformers.TrainingArguments` name (or the stage's TRL config), typed and checked against
that class's fields, read from the cached field table (config/arg_fields.py) so validation does not import transformers."""

import dataclasses
import enum
from typing import Any, get_args, get_origin

from tuneforge.config.errors import did_you_mean
from tuneforge.config.fields import coerce

# Keys we own elsewhere (output section) or set from other sections; users write them flat as usual.
OWNED_ELSEWHERE = {"output_dir", "resume_from_checkpoint", "seed"}

# Our defaults where the library's do not suit fine-tuning runs; every other default is the library's.
DEFAULTS: dict[str, Any] = {
    "logging_steps": 10,
    "remove_unused_columns": False,  # our datasets hold exactly the model inputs
    "dataloader_pin_memory": False,
    # the library's filter logs a NaN/inf step as the mean of the finite ones (0 when none is): a diverged run would
    # report `train_loss: 0.0`; ours shows it as NaN
    "logging_nan_inf_filter": False,
}


@dataclasses.dataclass
class TrainSection:
    """Training hyperparameters: passed to `transformers.TrainingArguments` under the same names."""

    args: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> list:
        from tuneforge.config import train_checks
        from tuneforge.train import checkpointing

        return checkpointing.validate(self.args) + train_checks.check(self.args)

    def get(self, name: str, default: Any = None) -> Any:
        if name in self.args:
            return self.args[name]
        if name in DEFAULTS:
            return DEFAULTS[name]
        f = training_fields().get(name)
        if f is not None and f.default is not dataclasses.MISSING:
            return f.default
        return default


def run_default(name: str, f: dataclasses.Field) -> Any:
    """The value a run gets for the train key `name` (field `f` of its arguments class) when nobody sets it: ours
    (DEFAULTS), False for bf16 and checkpointing (TRL's configs turn them on; `build_training_arguments` does not),
    else the class's own default (None when it has none)."""
    if name in DEFAULTS:
        return DEFAULTS[name]
    if name == "bf16" or name.endswith("_checkpointing"):
        return False
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]


_FIELDS: dict[type, dict[str, dataclasses.Field]] = {}


def _default_args_class() -> type:
    from transformers import TrainingArguments

    return TrainingArguments


def training_fields(args_class: type | None = None, own_only: bool = False) -> dict[str, Any]:
    """The fields of a stage's arguments class (TrainingArguments or a TRL config) by name, minus the keys other
    sections own. Both checkpointing spellings are accepted even where the installed class has only one of them
    (`own_only`: just the class's own fields). Without `args_class`: TrainingArguments' fields from the cached table
    (config.arg_fields), so nothing imports transformers."""
    if args_class is None:
        return stage_fields(None, own_only)
    if args_class not in _FIELDS:
        from tuneforge.config.arg_fields import live_fields

        _FIELDS[args_class] = live_fields(args_class)
    return _with_aliases(_FIELDS[args_class], own_only)


def stage_fields(stage: str | None, own_only: bool = False) -> dict[str, Any]:
    """`training_fields` of a registered stage's arguments class (TrainingArguments for None or an unknown stage), read
    from the cached field table: the class itself is imported only when the table is missing or stale."""
    from tuneforge.config.arg_fields import fields_of
    from tuneforge.stages.registry import STAGES, Stage

    record = STAGES.get(stage) if stage is not None else None
    make_class = record.args_class if record is not None else Stage.args_class
    return _with_aliases(fields_of(make_class), own_only)


def _with_aliases(all_fields: dict[str, Any], own_only: bool) -> dict[str, Any]:
    fields = {name: f for name, f in all_fields.items() if name not in OWNED_ELSEWHERE}
    if own_only:
        return fields
    from tuneforge.train.checkpointing import ALIASES

    aliased = dict(fields)
    for old, new in ALIASES:
        for a, b in ((old, new), (new, old)):
            if a not in aliased and b in fields:
                aliased[a] = fields[b]
    return aliased


def _enum_in(tp: Any) -> type[enum.Enum] | None:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp
    for arg in get_args(tp) if get_origin(tp) is not None else ():
        found = _enum_in(arg)
        if found:
            return found
    return None


def coerce_training_value(name: str, value: Any, fields: dict[str, Any] | None = None) -> Any:
    """Check one `train` value against its annotation in `fields` (a stage's `training_fields`; default
    TrainingArguments'); ValueError names what is allowed."""
    tp = (fields if fields is not None else training_fields())[name].type
    choices = _enum_in(tp)
    if choices is not None and value is False and "no" in [c.value for c in choices]:
        value = "no"  # YAML 1.1 reads an unquoted `no` as false
    if choices is not None and isinstance(value, str):
        allowed = [c.value for c in choices]
        if value not in allowed:
            shown = ", ".join(map(str, allowed[:10])) + (", ..." if len(allowed) > 10 else "")
            raise ValueError(f"must be one of {shown} (got {value!r}){did_you_mean(value, allowed)}")
        return value
    if choices is not None:
        raise ValueError(f"must be one of {', '.join(str(c.value) for c in list(choices)[:10])} (got {value!r})")
    try:
        return coerce(value, tp)
    except (TypeError, ValueError) as e:
        # Annotations such as `float` for logging_steps also accept ints; fall back to a plain number check.
        if isinstance(e, ValueError):
            raise
        return value


def build_training_arguments(cfg, check_only: bool = False, overrides: dict | None = None, args_class: type | None = None):
    """The stage's arguments (`transformers.TrainingArguments` or a TRL config) from a RunConfig: our defaults, then
    the user's values, then the values the method sets (e.g. GaLore's optimizer).

    Args:
        cfg: the RunConfig.
        check_only: build only to let the library validate combinations.
        overrides: values the fine-tuning method sets.
        args_class: the stage's arguments class (default: TrainingArguments).
    """
    import torch

    from tuneforge.train import checkpointing

    cls = args_class or _default_args_class()
    kwargs = {**DEFAULTS, **cfg.train.args, **(overrides or {})}
    kwargs["output_dir"] = cfg.output.output_dir or "unset"
    kwargs["seed"] = cfg.data.seed
    # Real (non-padding) tokens: packed rows hold no padding, padded rows carry an attention mask.
    kwargs.setdefault("include_num_input_tokens_seen", "all" if cfg.data.packing else "non_padding")
    if not torch.cuda.is_available():
        kwargs.setdefault("use_cpu", True)
    if getattr(cfg.data, "streaming", False):
        # accelerate dispatches an iterable dataset's batches by slicing every tensor along dim 0, which cuts a packed
        # row's example boundaries (cu_seq_lens) to one entry; each process reads its own batches instead
        kwargs.setdefault("accelerator_config", {"dispatch_batches": False})
    prefix = checkpointing.installed_prefix()
    kwargs = checkpointing.normalize(kwargs, prefix)  # a resolved config already has the installed spelling
    # TRL's configs turn on bf16 and checkpointing by default; precision and checkpointing follow our config instead
    # (TrainingArguments' defaults unless the user or config.resolve set them)
    kwargs.setdefault("bf16", False)
    kwargs.setdefault(f"{prefix}_checkpointing", False)
    if kwargs.get(f"{prefix}_checkpointing"):
        # non-reentrant checkpointing lets gradients reach adapters on a frozen (or quantized) base
        kwargs[f"{prefix}_checkpointing_kwargs"] = {"use_reentrant": False, **checkpointing.kwargs_of(kwargs)}
    own = training_fields(cls, own_only=True)
    return cls(**{k: v for k, v in kwargs.items() if k in own or k in ("output_dir", "seed", "resume_from_checkpoint")})
