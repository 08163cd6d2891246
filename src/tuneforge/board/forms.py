"""The Board's forms as data: `config.describe()` -> one FieldSpec per key -> widget values -> the config dict a
YAML holds, and back. Pure functions (no gradio), so the round trip is unit-tested without a browser."""

import json
import re
from dataclasses import dataclass

import yaml

ALWAYS_WRITTEN = ("model_name_or_path", "stage", "finetuning_type")  # a YAML says what it trains, even at the defaults
UNSET = "(default)"  # the choice that leaves an optional bool/choice key unset (None)
SECTION_ORDER = ("model", "data", "method", "train", "output", "generation", "export", "eval")
# the train keys most runs change, shown open; every other train key sits in a closed accordion
COMMON_TRAIN = ("max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                "lr_scheduler_type", "warmup_ratio", "logging_steps", "save_steps", "save_strategy", "eval_strategy",
                "gradient_checkpointing", "bf16", "fp16", "seed")
# stable element ids the browser tests and users' scripts rely on; every other key gets `tf-key-<name>`
ELEM_IDS = {"model_name_or_path": "tf-model", "stage": "tf-stage", "finetuning_type": "tf-method", "dataset": "tf-dataset",
            "max_steps": "tf-max-steps", "output_dir": "tf-output-dir"}


@dataclass
class FieldSpec:
    """One form field: which widget shows a config key and how its value maps to the config.

    widget: checkbox, dropdown, multiselect, number, optnumber (a textbox: empty is unset), textbox or yaml (a textbox
    read as YAML); value: the widget's
    initial value (the key's default in widget terms); owner: the method(s)/stage(s) the key belongs to (None: all).
    """

    name: str
    section: str
    widget: str
    value: object
    default: object
    help: str
    owner: str | None = None
    choices: list | None = None
    type: str = "str"
    optional: bool = False
    stage_defaults: dict | None = None
    choice_values: dict | None = None  # a choice as shown -> the key's own value (`False`, an int)

    @property
    def elem_id(self) -> str:
        return ELEM_IDS.get(self.name, f"tf-key-{self.name}")

    @property
    def group(self) -> str:
        """The accordion the field sits in: its section, with the uncommon train keys apart."""
        if self.section == "train" and self.name not in COMMON_TRAIN:
            return "train_more"
        return self.section


def _widget(k) -> str:
    if k.name in ("dataset", "eval_dataset"):
        return "multiselect"
    if k.choices:
        return "dropdown"
    numeric = (k.default is None or isinstance(k.default, (int, float))) and not isinstance(k.default, bool)
    if k.type == "bool" and (k.default is None or isinstance(k.default, bool)):
        return "dropdown" if k.optional or k.default is None else "checkbox"
    if k.type in ("int", "float") and numeric:
        return "number" if k.default is not None else "optnumber"  # a number box cannot be empty: unset is text
    if k.type in ("bool", "int", "float"):  # a default outside the declared type (`'no'`, `'auto'`): text read as YAML
        return "yaml"
    if k.type in ("list", "dict", "any"):
        return "yaml"
    return "textbox"


def spec(keys=None, stage: str = "sft") -> list[FieldSpec]:
    """Every key of `describe()` (or of `keys`) as a FieldSpec, sections in SECTION_ORDER; initial values are the
    defaults under `stage`."""
    if keys is None:
        from tuneforge.config import describe

        keys = describe()
    out, seen = [], set()
    for k in keys:
        if k.name in seen:  # a flat key both a base section and a stage's arguments have: the loader gives it to the first
            continue
        seen.add(k.name)
        widget = _widget(k)
        choices = None
        if widget == "dropdown":
            choices = [str(c) for c in k.choices] if k.choices else ["true", "false"]
            if k.optional or k.default is None:
                choices = [UNSET] + choices
        f = FieldSpec(k.name, k.section, widget, None, k.default, k.help, k.owner, choices, k.type, k.optional, k.stage_defaults,
                      {str(c): c for c in k.choices} if k.choices else None)
        f.value = to_widget(f, default_for(f, stage))
        out.append(f)
    rank = {s: i for i, s in enumerate(SECTION_ORDER)}
    return sorted(out, key=lambda f: rank.get(f.section, len(rank)))  # stable: keeps describe()'s order inside a section


def _yaml_text(value) -> str:
    if value is None:
        return ""
    return json.dumps(value) if not isinstance(value, str) else value


def to_widget(f: FieldSpec, value):
    """A config value as the widget shows it."""
    if f.widget == "checkbox":
        return bool(value)
    if f.widget == "dropdown":
        if value is None:
            return UNSET if f.choices and UNSET in f.choices else None
        return ("true" if value else "false") if isinstance(value, bool) and f.type == "bool" else str(value)
    if f.widget == "multiselect":
        if value is None:
            return []
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else [str(v) for v in value]
    if f.widget == "number":
        return value
    if f.widget == "yaml":
        return _yaml_text(value)
    if f.widget == "optnumber":
        return "" if value is None else (yaml.safe_dump(value).strip().removesuffix("...").strip()
                                         if isinstance(value, (int, float)) else str(value))
    return "" if value is None else str(value)


class FieldValueError(ValueError):
    """A widget value that cannot be read as its key's type; the message names the key."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def from_widget(f: FieldSpec, value):
    """A widget value as the config value (the inverse of `to_widget`)."""
    if f.widget == "checkbox":
        return bool(value)
    if f.widget == "dropdown":
        if value in (None, UNSET, ""):
            return None
        if f.choice_values and str(value) in f.choice_values:
            return f.choice_values[str(value)]
        if f.type == "bool":
            return str(value).lower() == "true"
        if f.type == "int":  # choices are shown as text; an int choice goes back as an int
            try:
                return int(value)
            except (TypeError, ValueError):
                return value
        return value
    if f.widget == "multiselect":
        return [str(v) for v in (value or [])]
    if f.widget == "number":
        if value is None or value == "":
            return None
        if f.type == "int":
            if float(value) != int(float(value)):
                raise FieldValueError(f.name, f"`{f.name}` takes a whole number (got {value})")
            return int(float(value))
        return float(value)
    if f.widget == "optnumber":
        text = str(value if value is not None else "").strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            raise FieldValueError(f.name, f"`{f.name}` takes a number (got {text}); leave it empty to keep the default") from None
        if f.type == "int":
            if number != int(number):
                raise FieldValueError(f.name, f"`{f.name}` takes a whole number (got {text})")
            return int(number)
        return number
    if f.widget == "yaml":
        text = (value or "").strip()
        if not text:
            return f.default if f.default in ([], {}) else None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise FieldValueError(f.name, f"`{f.name}` is not valid YAML ({str(e).splitlines()[0]}); "
                                          "write a list as [a, b] or a, b and a mapping as {k: v}") from None
    text = "" if value is None else str(value)
    if text == "" and (f.optional or f.default is None):
        return None
    return text


def default_for(f: FieldSpec, stage: str | None):
    """The key's default under `stage` (train keys whose default differs between stages)."""
    if f.stage_defaults and stage in f.stage_defaults:
        return f.stage_defaults[stage]
    return f.default


def same(a, b) -> bool:
    """Equal as form values (1 == 1.0; list items compared as text)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, list) and isinstance(b, list):
        return [str(x) for x in a] == [str(x) for x in b]
    return a == b


def applies(f: FieldSpec, stage: str | None, method: str | None) -> bool:
    """Whether the key belongs to the chosen stage/method (keys of other methods and stages are hidden and not written)."""
    if not f.owner:
        return True
    owners = f.owner.split(",")
    return (method in owners) if f.section == "method" else (stage in owners)


def config_from_values(specs: list[FieldSpec], values: list, strict: bool = False) -> tuple[dict, dict]:
    """(config dict, field errors) from the widgets' values, in `specs` order. Only keys that apply to the chosen
    stage and method and differ from their default are written, so the YAML holds what the user chose.

    A value that cannot be read is an error for its key (`strict`: raise the first instead)."""
    raw = {f.name: v for f, v in zip(specs, values)}
    by_name = {f.name: f for f in specs}
    stage = raw.get("stage") or "sft"
    method = raw.get("finetuning_type") or "lora"
    out, errors = {}, {}
    for f in specs:
        if f.name not in raw or not applies(f, stage, method):
            continue
        default = default_for(f, stage)
        if f.name not in ALWAYS_WRITTEN and same(raw[f.name], to_widget(f, default)):
            continue  # untouched: the default stays the library's
        try:
            value = from_widget(f, raw[f.name])
        except (FieldValueError, ValueError, TypeError) as e:
            if strict:
                raise
            errors[f.name] = str(e) if isinstance(e, FieldValueError) else f"`{f.name}`: {e}"
            continue
        if f.name in ALWAYS_WRITTEN or not same(value, default):
            out[f.name] = value
    # a LLaMA-Factory alias (`pref_beta`) and its target set the same value: keep the one the user changed
    for name in list(out):
        target = re.match(r"LLaMA-Factory's name for `([a-z0-9_]+)`", by_name[name].help or "")
        if target and target.group(1) in out:
            del out[name]
    return out, errors


def values_from_config(specs: list[FieldSpec], flat: dict) -> tuple[list, list[str]]:
    """Widget values for a config dict (a saved YAML, a job's config): every key not in it gets its default.
    Returns (values in `specs` order, keys of `flat` the form has no field for)."""
    from tuneforge.config import compat

    flat, _ = compat.normalize(dict(flat))  # LLaMA-Factory spellings to ours
    by_name = {f.name: f for f in specs}
    stage = flat.get("stage", "sft")
    values = [to_widget(f, flat[f.name]) if f.name in flat else to_widget(f, default_for(f, stage)) for f in specs]
    return values, sorted(k for k in flat if k not in by_name)


def to_yaml(cfg: dict) -> str:
    """The config as the YAML `tuneforge train` reads (keys in the form's order)."""
    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, default_flow_style=None)


def cli_overrides(cfg: dict) -> str:
    """The same config as one `tuneforge train key=value ...` line (values as YAML scalars, quoted for a POSIX shell)."""
    import shlex

    parts = []
    for k, v in cfg.items():
        text = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else yaml.safe_dump(v).strip().removesuffix("...").strip()
        if isinstance(v, list) and all(isinstance(x, str) and "," not in x for x in v):
            text = ",".join(v)
        parts.append(shlex.quote(f"{k}={text}"))
    return "tuneforge train " + " ".join(parts)


def problems_by_key(error) -> tuple[dict, list[str]]:
    """A ConfigError's problems as {key: message} plus the messages that name no form key."""
    by_key, general = {}, []
    for p in getattr(error, "problems", []):
        if p.key:
            by_key[p.key] = (by_key[p.key] + "; " + p.message) if p.key in by_key else p.message
        else:
            general.append(p.message)
    if not getattr(error, "problems", None):
        general.append(str(error))
    return by_key, general
