"""`describe()`: every config key with its type, choices, default, help, section and owner (method or stage), and
whether it is an LLaMA-Factory name. `tuneforge train --help-keys` prints it; the Board builds its forms from it."""

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin


@dataclass
class KeyInfo:
    """One config key.

    type: bool, int, float, str, list, dict or any; choices: the allowed values or None; optional: None is allowed;
    section: model, data, method, train, output, generation, export or eval; owner: the method(s) or stage(s) the key
    belongs to (None for keys every run has); llamafactory: LLaMA-Factory reads the same key; stage_defaults: stage ->
    default, for a train key whose default differs between the stages that have it (`default` is then the first's).
    """

    name: str
    type: str
    default: Any
    help: str
    section: str
    owner: str | None = None
    choices: list | None = None
    optional: bool = False
    llamafactory: bool = False
    stage_defaults: dict | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _type_of(tp: Any) -> tuple[str, list | None, bool]:
    """(type name, choices, optional) of an annotation."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        optional = len(args) < len(get_args(tp))
        kinds = [_type_of(a) for a in args]
        choices = next((c for _, c, _ in kinds if c), None)
        name = next((n for n, _, _ in kinds if n != "str"), kinds[0][0]) if kinds else "any"
        if choices:
            name = "str"
        return name, choices, optional
    if origin is Literal:
        return "str", [_plain(a) for a in get_args(tp)], False
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "str", [c.value for c in tp], False
    if origin in (list, tuple) or tp in (list, tuple):
        return "list", None, False
    if origin is dict or tp is dict:
        return "dict", None, False
    for t in (bool, int, float, str):
        if tp is t:
            return t.__name__, None, False
    return "any", None, False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return _plain(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return _plain(f.default_factory())  # type: ignore[misc]
    return None


def describe(stage: str | None = None) -> list[KeyInfo]:
    """Every key a config may hold, grouped by section in a stable order.

    Args:
        stage: only this stage's train keys (default: the train keys of every registered stage; a key that only
            some stages' arguments classes have names them as its owner).
    """
    from tuneforge.config import compat
    from tuneforge.config.fields import section_fields
    from tuneforge.config.loader import BASE_SECTIONS, _ensure_registered
    from tuneforge.config.registry import METHOD_SECTIONS
    from tuneforge.config.train_args import run_default, stage_fields
    from tuneforge.methods.registry import METHODS
    from tuneforge.stages.registry import STAGES

    _ensure_registered()
    out: list[KeyInfo] = []
    registry_choices = {"stage": sorted(STAGES), "finetuning_type": sorted(METHODS)}
    for name, cls in BASE_SECTIONS.items():
        for key, f in section_fields(cls).items():
            tp, choices, optional = _type_of(f.type)
            out.append(KeyInfo(key, tp, _default(f), f.metadata.get("help", ""), name, None,
                               registry_choices.get(key, choices), optional, key in compat.LLAMAFACTORY_NAMES))
    users: dict[type, list[str]] = {}  # a section class may serve several methods (prefix and prompt)
    for method, cls in METHOD_SECTIONS.items():
        users.setdefault(cls, []).append(method)
    for cls, methods in users.items():
        for key, f in section_fields(cls).items():
            tp, choices, optional = _type_of(f.type)
            out.append(KeyInfo(key, tp, _default(f), f.metadata.get("help", ""), "method", ",".join(methods), choices, optional,
                               key in compat.LLAMAFACTORY_NAMES))
    stages = [stage] if stage else sorted(STAGES) or ["sft"]
    per_stage = {s: stage_fields(s) for s in stages}
    base = set(stage_fields(None))
    train: dict[str, KeyInfo] = {}
    sectioned = {k.name for k in out}

    def stage_default(s: str, key: str):
        own = STAGES[s].train_defaults if s in STAGES else {}
        return _plain(own[key] if key in own else run_default(key, per_stage[s][key]))

    for s, fields in per_stage.items():
        for key, f in fields.items():
            if key in train or key in sectioned:  # a section owns the key in a config (GRPO's temperature: generation)
                continue
            tp, choices, optional = _type_of(f.type)
            having = [x for x, fl in per_stage.items() if key in fl]
            owners = None if key in base else ",".join(having)
            defaults = {x: stage_default(x, key) for x in having}
            differ = len({repr(v) for v in defaults.values()}) > 1
            train[key] = KeyInfo(key, tp, defaults[s], f.metadata.get("help", ""), "train", owners, choices, optional, True,
                                 stage_defaults=defaults if differ else None)
    for s in stages:  # LLaMA-Factory's names for a stage's keys (`pref_beta` for `beta`)
        for alias, (target, _) in (STAGES[s].llamafactory_names.items() if s in STAGES else ()):
            if alias not in train and target in train:
                t = train[target]
                train[alias] = dataclasses.replace(t, name=alias, owner=s, llamafactory=True,
                                                   help=f"LLaMA-Factory's name for `{target}`. {t.help}".strip())
    out += [train[k] for k in sorted(train)]
    return out


def stage_summaries() -> list[tuple[str, str, str]]:
    """(name, data kind, help) of every registered stage."""
    from tuneforge.config.loader import _ensure_registered
    from tuneforge.stages.registry import STAGES

    _ensure_registered()
    return [(s.name, s.data_kind, s.help) for s in sorted(STAGES.values(), key=lambda s: s.name)]


def method_summaries() -> list[tuple[str, str]]:
    """(name, help) of every registered method, with its facts."""
    from tuneforge.config.loader import _ensure_registered
    from tuneforge.methods.registry import METHODS

    _ensure_registered()
    out = []
    for m in sorted(METHODS.values(), key=lambda m: m.name):
        facts = [f for f, on in (("adapter", m.adapter), ("quantizable base", m.quantizable), ("no packing", not m.packs)) if on]
        out.append((m.name, m.help + (f" [{', '.join(facts)}]" if facts else "")))
    return out
