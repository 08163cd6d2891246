"""Load a RunConfig from YAML plus `key=value` overrides: flat keys in, typed sections out, every problem at once."""

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from tuneforge.config import compat
from tuneforge.config.errors import ConfigError, did_you_mean
from tuneforge.config.fields import coerce, section_fields
from tuneforge.config.registry import METHOD_SECTIONS
from tuneforge.config.schema import (DataSection, EvalSection, ExportSection, GenerationSection, MethodSection, ModelSection,
                                     OutputSection)
from tuneforge.config.train_args import DEFAULTS as TRAIN_DEFAULTS
from tuneforge.config.train_args import TrainSection, coerce_training_value, stage_fields

logger = logging.getLogger(__name__)

BASE_SECTIONS = {"model": ModelSection, "data": DataSection, "method": MethodSection, "output": OutputSection,
                 "generation": GenerationSection, "export": ExportSection, "eval": EvalSection}


@dataclass
class RunConfig:
    """One run, grouped by concern. Users write the keys flat; `to_flat()` gives them back that way.

    `load()` returns it validated; `resolve()` returns a copy with every value that follows from the others filled
    in (`changes` lists them; None until resolved)."""

    model: ModelSection
    data: DataSection
    method: MethodSection
    output: OutputSection
    generation: GenerationSection
    export: ExportSection
    eval: EvalSection
    train: TrainSection
    methods: dict[str, Any]  # method name -> its section (e.g. "lora" -> LoraSection)
    ignored: list[str] = dataclasses.field(default_factory=list)  # LLaMA-Factory keys accepted but not acted on
    given: set[str] = dataclasses.field(default_factory=set)  # the keys the user wrote (after LLaMA-Factory renames)
    changes: list[tuple[str, Any, Any, str]] | None = None  # (key, before, after, why) filled by resolve()

    def method_section(self, name: str | None = None) -> Any:
        """The section of `name` (default: the chosen finetuning_type), or None if the method has none."""
        return self.methods.get(name or self.method.finetuning_type)

    def sections(self) -> dict[str, Any]:
        """Section name -> section object: the base sections, then the chosen method's."""
        out = {name: getattr(self, name) for name in BASE_SECTIONS}
        own = self.method_section()
        if own is not None:
            out[self.method.finetuning_type] = own
        return out

    def to_flat(self) -> dict[str, Any]:
        """The config as flat `key: value` pairs, the way a user writes YAML (every section, the method's own keys,
        the train keys with our defaults)."""
        flat: dict[str, Any] = {}
        for name, section in self.sections().items():
            flat.update(dataclasses.asdict(section))
            if name == "method":
                flat.update({**TRAIN_DEFAULTS, **self.train.args})
        return flat

    def get(self, key: str, default: Any = None) -> Any:
        """A value by its flat key, from whichever section owns it."""
        for section in self.sections().values():
            if key in {f.name for f in dataclasses.fields(section)}:
                return getattr(section, key)
        return self.train.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Set a value by its flat key (resolution uses this; validation never does)."""
        for section in self.sections().values():
            if key in {f.name for f in dataclasses.fields(section)}:
                setattr(section, key, value)
                return
        self.train.args[key] = value


def _ensure_registered() -> None:
    # Methods and stages register their sections and records on import; config itself imports nothing else of ours.
    import importlib

    importlib.import_module("tuneforge.methods")
    importlib.import_module("tuneforge.stages")




def _all_sections() -> dict[str, type]:
    """Section name -> class; a class shared by several methods appears once, under its first name."""
    out: dict[str, type] = dict(BASE_SECTIONS)
    for name, cls in METHOD_SECTIONS.items():
        if cls not in out.values():
            out[name] = cls
    return out


def _key_owners() -> dict[str, str]:
    owners: dict[str, str] = {}
    for name, cls in _all_sections().items():
        for key in section_fields(cls):
            if key in owners:
                raise RuntimeError(f"config key `{key}` is declared by both `{owners[key]}` and `{name}`")
            owners[key] = name
    return owners


def stage_args_class(stage: str) -> type:
    """The arguments class whose fields are `stage`'s train keys (TrainingArguments for an unknown stage)."""
    from tuneforge.stages.registry import STAGES

    record = STAGES.get(stage)
    if record is None:
        from transformers import TrainingArguments

        return TrainingArguments
    return record.args_class()


def known_keys() -> set[str]:
    """Every key a config may hold: every section's fields and every registered stage's train keys."""
    from tuneforge.stages.registry import STAGES

    _ensure_registered()
    keys = set(_key_owners())
    for name in STAGES or ["sft"]:
        keys |= set(stage_fields(name))
        keys |= set(STAGES[name].llamafactory_names) if name in STAGES else set()
    return keys


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key written twice in one mapping (safe_load keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError([(str(key), f"`{key}` is set twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                                              f"keep one")])
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: str) -> dict[str, Any]:
    """Read a YAML config file into a flat dict; errors name the file."""
    if not os.path.isfile(path):
        raise ConfigError([(None, f"config file `{path}` does not exist; check the path")])
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as e:
        raise ConfigError([(None, f"`{path}` is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8")]) from None
    except yaml.YAMLError as e:
        raise ConfigError([(None, f"`{path}` is not valid YAML: {e}")]) from None
    except ConfigError as e:
        raise ConfigError([(p.key, f"`{path}`: {p.message}") for p in e.problems]) from None
    if not isinstance(data, dict):
        raise ConfigError([(None, f"`{path}` must be a mapping of `key: value` lines (got {type(data).__name__})")])
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings to a dict; values are read as YAML scalars."""
    out, problems = {}, []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append((None, f"`{item}` is not a `key=value` override"))
            continue
        try:
            out[key.strip().lstrip("-")] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip().lstrip("-")] = value
    if problems:
        raise ConfigError(problems)
    return out


def load(path: str | None = None, overrides: list[str] | dict[str, Any] | None = None, purpose: str = "train") -> RunConfig:
    """Build a validated RunConfig from an optional YAML file and overrides. Nothing heavy is loaded.

    Args:
        path: a YAML file, or None.
        overrides: `key=value` strings or a dict, applied over the file.
        purpose: `train` (needs output_dir), `export` (needs export_dir), `eval` (needs something to evaluate) or `infer`.

    Raises:
        ConfigError: listing every unknown key (with a did-you-mean), wrong type and invalid value as (key, message).
    """
    flat = read_yaml(path) if path else {}
    if isinstance(overrides, dict):
        flat.update(overrides)
    elif overrides:
        flat.update(parse_overrides(overrides))
    return from_flat(flat, purpose)


def from_flat(flat: dict[str, Any], purpose: str = "train") -> RunConfig:
    """Group flat keys into sections, coerce types and validate; raise one ConfigError listing every problem.
    Validation never changes a value: `resolve()` fills what follows from the settings."""
    _ensure_registered()
    flat, notes = compat.normalize(flat)
    for note in notes:
        logger.info(note)
    owners = _key_owners()
    stage = flat.get("stage", MethodSection.stage)
    tfields = stage_fields(str(stage))
    sections_cls = _all_sections()
    grouped: dict[str, dict[str, Any]] = {name: {} for name in sections_cls}
    train_args: dict[str, Any] = {}
    problems: list = []
    ignored: list[str] = []
    given: set[str] = set()
    stage_names = _stage_llamafactory_names(str(stage))
    for key, value in flat.items():
        if key in stage_names and key not in owners and key not in tfields:
            new, convert = stage_names[key]
            if new in flat:
                problems.append((key, f"`{key}` (LLaMA-Factory's name) and `{new}` set the same value; keep one"))
                continue
            try:
                key, value = new, (convert(value) if convert else value)
            except (TypeError, ValueError) as e:
                problems.append((key, f"`{key}` {e}"))
                continue
        elif key in compat.RENAMED and key not in owners and key not in tfields:
            new, convert = compat.RENAMED[key]
            key, value = new, (convert(value) if convert else value)
        given.add(key)
        if key in owners:
            grouped[owners[key]][key] = value
        elif key in tfields:
            try:
                train_args[key] = coerce_training_value(key, value, tfields)
            except ValueError as e:
                problems.append((key, f"`{key}` {e}"))
        elif key in compat.LLAMAFACTORY_ONLY:
            ignored.append(key)
        else:
            other = _stage_owning(key)
            if other:
                problems.append((key, f"`{key}` belongs to stage {other}, not `{stage}`; set stage: {other} or remove it"))
                continue
            hint = did_you_mean(key, list(owners) + list(tfields)) or "; see `tuneforge train --help-keys` for every key"
            problems.append((key, f"unknown key `{key}`{hint}"))

    sections: dict[str, Any] = {}
    for name, cls in sections_cls.items():
        fields = section_fields(cls)
        values = {}
        for key, value in grouped[name].items():
            try:
                values[key] = coerce(value, fields[key].type)
            except ValueError as e:
                problems.append((key, f"`{key}` {e}"))
        sections[name] = cls(**values)

    cfg = RunConfig(
        model=sections["model"], data=sections["data"], method=sections["method"], output=sections["output"],
        generation=sections["generation"], export=sections["export"], eval=sections["eval"], train=TrainSection(train_args),
        ignored=sorted(set(ignored)),
        methods={n: next(sections[k] for k, c in sections_cls.items() if c is cls) for n, cls in METHOD_SECTIONS.items()},
        given=given,
    )
    known = set(owners) | set(tfields)
    if problems:  # type problems make range checks meaningless; report them first
        raise ConfigError(problems, known)
    problems += _validate(cfg, given, purpose)
    if problems:
        raise ConfigError(problems, known)
    if cfg.ignored:
        logger.warning("LLaMA-Factory keys accepted but not used by tuneforge (they have no effect): %s", ", ".join(cfg.ignored))
    return cfg


def _stage_llamafactory_names(stage: str) -> dict:
    """LLaMA-Factory key -> (train key, convert) of `stage` (empty for an unknown stage)."""
    from tuneforge.stages.registry import STAGES

    record = STAGES.get(stage)
    return dict(record.llamafactory_names) if record is not None else {}


def _stage_owning(key: str) -> str | None:
    """The first registered stage whose arguments class or LLaMA-Factory names have `key` (for a helpful error)."""
    from tuneforge.stages.registry import STAGES

    for name in sorted(STAGES):
        if key in stage_fields(name) or key in STAGES[name].llamafactory_names:
            return name
    return None


def _validate(cfg: RunConfig, given: set[str], purpose: str) -> list:
    from tuneforge.methods.registry import METHODS, names
    from tuneforge.stages.registry import STAGES

    problems: list = []
    for section in (cfg.model, cfg.data, cfg.method, cfg.train, cfg.generation, cfg.export, cfg.eval):
        problems += section.validate()
    if purpose == "eval" or (purpose == "train" and cfg.eval.eval_before_after):
        problems += cfg.eval.validate_run(given, cfg.data)
    if purpose == "train":
        problems += cfg.output.validate()
    if purpose == "export" and not cfg.export.export_dir:
        problems.append(("export_dir", "export_dir is missing; add `export_dir: exports/my-model` (or `export_dir=...` on the command line)"))
    stage = cfg.method.stage
    if stage not in STAGES:
        problems.append(("stage", f"stage `{stage}` is not available{did_you_mean(stage, STAGES)}; choose one of {', '.join(sorted(STAGES))}"))
    elif purpose == "train" and STAGES[stage].validate is not None:
        problems += STAGES[stage].validate(cfg)
    method = cfg.method.finetuning_type
    if method not in METHODS:
        problems.append(("finetuning_type", f"finetuning_type `{method}` is not available{did_you_mean(method, METHODS)}; "
                                            f"choose one of {', '.join(sorted(METHODS))}"))
        return problems
    facts = METHODS[method]
    problems += cfg.methods[method].validate()
    run_check = getattr(cfg.methods[method], "validate_run", None)
    if run_check is not None and purpose == "train":
        problems += run_check(cfg)
    if cfg.model.quantization_bit and purpose == "train" and not facts.quantizable:
        problems.append(("quantization_bit", f"quantization_bit needs an adapter method ({', '.join(names(quantizable=True))}): "
                                             f"quantized weights cannot train with finetuning_type `{method}`; remove "
                                             f"quantization_bit or use finetuning_type: lora"))
    for other, section in cfg.methods.items():
        own = section is cfg.methods[method]
        stray = sorted(set(section_fields(type(section))) & given) if not own else []
        if stray:
            logger.warning("%s only apply to finetuning_type `%s` and are ignored with `%s`", ", ".join(stray), other, method)
    if purpose != "train":
        return problems
    if cfg.model.adapter_name_or_path and not facts.adapter:
        problems.append(("adapter_name_or_path", f"adapter_name_or_path needs an adapter method ({', '.join(names(adapter=True))}), "
                                                 f"got `{method}`; merge the adapter first (tuneforge export) or use finetuning_type: lora"))
    if cfg.data.streaming and stage in STAGES and not STAGES[stage].streams:
        problems.append(("streaming", f"streaming is not available with stage {stage} (stages that stream: "
                                      f"{', '.join(sorted(s for s in STAGES if STAGES[s].streams))}); set streaming: false"))
    if cfg.data.streaming and not int(cfg.train.args.get("max_steps", -1) or -1) > 0:
        problems.append(("max_steps", "streaming reads the data lazily, so the run's length is unknown: set max_steps "
                                      "(e.g. max_steps: 1000)"))
    if cfg.data.packing and stage in STAGES and not STAGES[stage].packs:
        problems.append(("packing", f"packing is not available with stage {stage}; set packing: false"))
    args = cfg.train.args
    optim = str(args.get("optim", ""))
    if any(k in optim for k in ("bnb", "8bit", "paged")) and not optim.startswith("galore"):
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append(("optim", f"optim: {optim} needs bitsandbytes: pip install 'tuneforge[quant]' (or pip install bitsandbytes)"))
    if args.get("bf16") and args.get("fp16"):
        problems.append(("bf16", "bf16 and fp16 are both true; choose one"))
    if cfg.output.resume_from_checkpoint and cfg.output.overwrite_output_dir:
        problems.append(("resume_from_checkpoint", "resume_from_checkpoint and overwrite_output_dir are both set; resuming keeps "
                                                   "the folder, so drop one"))
    if not problems:  # the library's own checks only make sense on values that passed ours
        problems += _check_training_arguments(cfg)
    return problems


def _check_training_arguments(cfg: RunConfig) -> list:
    """Let the stage's arguments class check its own combinations (cheap; no model is loaded)."""
    from tuneforge.config.train_args import build_training_arguments

    try:
        build_training_arguments(cfg, check_only=True, args_class=stage_args_class(cfg.method.stage))
    except (ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        key = next((k for k in re.findall(r"`?([a-z_][a-z0-9_]*)`?", first)[:3] if k in known_keys()), None)
        return [(key, f"training arguments: {first}")]
    return []
