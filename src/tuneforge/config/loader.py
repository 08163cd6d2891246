"""Load a RunConfig from YAML plus `key=value` overrides: flat keys in, typed sections out, every problem at once."""

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

import yaml

from tuneforge.config import compat
from tuneforge.config.errors import ConfigError, did_you_mean
from tuneforge.config.fields import coerce, section_fields
from tuneforge.config.registry import METHOD_SECTIONS
from tuneforge.config.schema import DataSection, ExportSection, GenerationSection, MethodSection, ModelSection, OutputSection
from tuneforge.config.train_args import DEFAULTS as TRAIN_DEFAULTS
from tuneforge.config.train_args import TrainSection, coerce_training_value, training_fields

logger = logging.getLogger(__name__)

QUANTIZABLE_METHODS = ("lora", "prefix", "prompt")
BASE_SECTIONS = {"model": ModelSection, "data": DataSection, "method": MethodSection, "output": OutputSection,
                 "generation": GenerationSection, "export": ExportSection}


@dataclass
class RunConfig:
    """One run, grouped by concern. Users write the keys flat; `to_flat()` gives them back that way."""

    model: ModelSection
    data: DataSection
    method: MethodSection
    output: OutputSection
    generation: GenerationSection
    export: ExportSection
    train: TrainSection
    methods: dict[str, Any]  # method name -> its section (e.g. "lora" -> LoraSection)
    ignored: list[str] = dataclasses.field(default_factory=list)  # LLaMA-Factory keys accepted but not acted on

    def method_section(self, name: str | None = None) -> Any:
        """The section of `name` (default: the chosen finetuning_type), or None if the method has none."""
        return self.methods.get(name or self.method.finetuning_type)

    def to_flat(self) -> dict[str, Any]:
        """The resolved config as flat `key: value` pairs, the way a user writes YAML."""
        flat: dict[str, Any] = {}
        for section in (self.model, self.data, self.method):
            flat.update(dataclasses.asdict(section))
        own = self.method_section()
        if own is not None:
            flat.update(dataclasses.asdict(own))
        flat.update({k: v for k, v in {**TRAIN_DEFAULTS, **self.train.args}.items()})
        flat.update(dataclasses.asdict(self.output))
        return flat


def _ensure_methods_registered() -> None:
    # Methods register their sections on import; config itself imports nothing else of ours.
    import importlib

    importlib.import_module("tuneforge.methods")


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


def read_yaml(path: str) -> dict[str, Any]:
    """Read a YAML config file into a flat dict; errors name the file."""
    if not os.path.isfile(path):
        raise ConfigError([f"config file `{path}` does not exist; check the path"])
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"`{path}` is not valid YAML: {e}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"`{path}` must be a mapping of `key: value` lines (got {type(data).__name__})"])
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings to a dict; values are read as YAML scalars."""
    out, problems = {}, []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"`{item}` is not a `key=value` override")
            continue
        out[key.strip().lstrip("-")] = yaml.safe_load(value) if value.strip() else None
    if problems:
        raise ConfigError(problems)
    return out


def load(path: str | None = None, overrides: list[str] | dict[str, Any] | None = None, purpose: str = "train") -> RunConfig:
    """Build a validated RunConfig from an optional YAML file and overrides. Nothing heavy is loaded.

    Args:
        path: a YAML file, or None.
        overrides: `key=value` strings or a dict, applied over the file.
        purpose: `train` (needs output_dir), `export` (needs export_dir) or `infer` (needs neither).

    Raises:
        ConfigError: listing every unknown key (with a did-you-mean), wrong type and invalid value.
    """
    flat = read_yaml(path) if path else {}
    if isinstance(overrides, dict):
        flat.update(overrides)
    elif overrides:
        flat.update(parse_overrides(overrides))
    return from_flat(flat, purpose)


def from_flat(flat: dict[str, Any], purpose: str = "train") -> RunConfig:
    """Group flat keys into sections, coerce types and validate; raise one ConfigError listing every problem."""
    _ensure_methods_registered()
    flat, notes = compat.normalize(flat)
    for note in notes:
        logger.info(note)
    owners = _key_owners()
    tfields = training_fields()
    sections_cls = _all_sections()
    grouped: dict[str, dict[str, Any]] = {name: {} for name in sections_cls}
    train_args: dict[str, Any] = {}
    problems: list[str] = []
    ignored: list[str] = []
    for key, value in flat.items():
        if key in compat.RENAMED and key not in owners and key not in tfields:
            new, convert = compat.RENAMED[key]
            key, value = new, (convert(value) if convert else value)
        if key in owners:
            grouped[owners[key]][key] = value
        elif key in tfields:
            try:
                train_args[key] = coerce_training_value(key, value)
            except ValueError as e:
                problems.append(f"`{key}` {e}")
        elif key in compat.LLAMAFACTORY_ONLY:
            ignored.append(key)
        else:
            known = list(owners) + list(tfields)
            hint = did_you_mean(key, known) or "; see `tuneforge train --help-keys` for every key"
            problems.append(f"unknown key `{key}`{hint}")

    sections: dict[str, Any] = {}
    for name, cls in sections_cls.items():
        fields = section_fields(cls)
        values = {}
        for key, value in grouped[name].items():
            try:
                values[key] = coerce(value, fields[key].type)
            except ValueError as e:
                problems.append(f"`{key}` {e}")
        sections[name] = cls(**values)

    cfg = RunConfig(
        model=sections["model"], data=sections["data"], method=sections["method"], output=sections["output"],
        generation=sections["generation"], export=sections["export"], train=TrainSection(train_args), ignored=sorted(set(ignored)),
        methods={n: next(sections[k] for k, c in sections_cls.items() if c is cls) for n, cls in METHOD_SECTIONS.items()},
    )
    if problems:  # type problems make range checks meaningless; report them first
        raise ConfigError(problems)
    problems += _validate(cfg, set(flat), purpose)
    if problems:
        raise ConfigError(problems)
    if cfg.data.packing is None:
        from tuneforge import methods

        cfg.data.packing = methods.get(cfg.method.finetuning_type).packs
    if cfg.ignored:
        logger.warning("LLaMA-Factory keys accepted but not used by tuneforge (they have no effect): %s", ", ".join(cfg.ignored))
    return cfg


def _validate(cfg: RunConfig, given: set[str], purpose: str) -> list[str]:
    problems: list[str] = []
    for section in (cfg.model, cfg.data, cfg.method, cfg.train, cfg.generation, cfg.export):
        problems += section.validate()
    if purpose == "train":
        problems += cfg.output.validate()
    if purpose == "export" and not cfg.export.export_dir:
        problems.append("export_dir is missing; add `export_dir: exports/my-model` (or `export_dir=...` on the command line)")
    method = cfg.method.finetuning_type
    if method not in METHOD_SECTIONS:
        problems.append(f"finetuning_type `{method}` is not available{did_you_mean(method, METHOD_SECTIONS)}; "
                        f"choose one of {', '.join(sorted(METHOD_SECTIONS))}")
    else:
        problems += cfg.methods[method].validate()
        run_check = getattr(cfg.methods[method], "validate_run", None)
        if run_check is not None and purpose == "train":
            problems += run_check(cfg)
        if cfg.model.quantization_bit and purpose == "train" and method not in QUANTIZABLE_METHODS:
            problems.append(f"quantization_bit needs an adapter method ({', '.join(QUANTIZABLE_METHODS)}): quantized weights "
                            f"cannot train with finetuning_type `{method}`; remove quantization_bit or use finetuning_type: lora")
        for other, section in cfg.methods.items():
            own = section is cfg.methods[method]
            stray = sorted(set(section_fields(type(section))) & given) if not own else []
            if stray:
                logger.warning("%s only apply to finetuning_type `%s` and are ignored with `%s`", ", ".join(stray), other, method)
    if purpose != "train":
        return problems
    if cfg.model.adapter_name_or_path and method not in QUANTIZABLE_METHODS:
        problems.append(f"adapter_name_or_path needs an adapter method ({', '.join(QUANTIZABLE_METHODS)}), got `{method}`; "
                        f"merge the adapter first (tuneforge export) or use finetuning_type: lora")
    args = cfg.train.args
    optim = str(args.get("optim", ""))
    if any(k in optim for k in ("bnb", "8bit", "paged")) and not optim.startswith("galore"):
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append(f"optim: {optim} needs bitsandbytes: pip install 'tuneforge[quant]' (or pip install bitsandbytes)")
    if args.get("bf16") and args.get("fp16"):
        problems.append("bf16 and fp16 are both true; choose one")
    if cfg.output.resume_from_checkpoint and cfg.output.overwrite_output_dir:
        problems.append("resume_from_checkpoint and overwrite_output_dir are both set; resuming keeps the folder, so drop one")
    problems += _check_training_arguments(cfg)
    return problems


def _check_training_arguments(cfg: RunConfig) -> list[str]:
    """Let TrainingArguments check its own combinations (cheap; no model is loaded)."""
    from tuneforge.config.train_args import build_training_arguments

    try:
        build_training_arguments(cfg, check_only=True)
    except (ValueError, TypeError) as e:
        return [f"training arguments: {str(e).strip().splitlines()[0]}"]
    return []
