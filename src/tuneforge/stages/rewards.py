"""Rewards for the generation stages (`reward_funcs`): built-in rules by name, Python functions by
`path/to/file.py:function` or `package.module:function`, and reward-model folders trained by `stage: rm`.

Every reward is called the way TRL's GRPOTrainer calls reward functions: `f(prompts=..., completions=...,
completion_ids=..., trainer_state=..., **columns)`, where prompts and completions are message lists (a completion is
`[{"role": "assistant", "content": text}]`) and `columns` are the dataset's other columns (`answer`, ...), one value
per completion; it returns one float (or None: no reward) per completion. So TRL's own reward functions
(`trl.rewards:think_format_reward`) work as they are.

Built-in rules (`name` or `name:argument`):
    exact_match[:column]  1.0 when the completion equals the reference in `column` (default `answer`), compared after
                          stripping spaces and a final period, case-folded, runs of whitespace as one space; else 0.0.
    contains[:column]     1.0 when the reference in `column` (default `answer`) appears in the completion as whole
                          words (case-folded); else 0.0.
    regex:<pattern>       1.0 when Python's `re.search(pattern, completion, re.DOTALL)` finds a match in the stripped
                          completion (anchor with ^ and $ to match it whole); else 0.0.
    length:<words>        min(words, target) / max(words, target): 1.0 at the target word count, 0.5 at half or twice it.
    think_format          TRL's think_format_reward: 1.0 for `<think>...</think>` followed by the answer.
"""

import importlib
import importlib.util
import inspect
import os
import re
from dataclasses import dataclass

from tuneforge import TuneforgeError
from tuneforge.config.errors import did_you_mean

KEY = "reward_funcs"
# keyword arguments GRPOTrainer passes to every reward function besides the dataset's columns
TRAINER_KWARGS = {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}


def _text(completion) -> str:
    """A completion's text: TRL passes `[{"role": "assistant", "content": ...}]` for chat prompts, text otherwise."""
    return completion[-1]["content"] if isinstance(completion, list) else completion


def _normalise(text: str) -> str:
    return " ".join(str(text).strip().rstrip(".").split()).casefold()


# Each rule is a factory: its options become the returned function's closure, so a dataset column that happens to be
# named like an option (`target`, `column`) cannot override it when the trainer passes the columns by keyword.

def exact_match(column: str = "answer"):
    """1.0 where the completion equals the row's reference in `column` (normalised), 0.0 elsewhere, None without one."""
    def exact_match(completions, **kwargs) -> list[float | None]:
        return [None if ref is None else float(_normalise(_text(c)) == _normalise(ref))
                for c, ref in zip(completions, kwargs[column])]

    return exact_match


def contains(column: str = "answer"):
    """1.0 where the row's reference in `column` appears in the completion as whole words (case-folded), 0.0 elsewhere,
    None without one."""
    def contains(completions, **kwargs) -> list[float | None]:
        return [None if ref is None else float(_has_words(_normalise(_text(c)), _normalise(ref)))
                for c, ref in zip(completions, kwargs[column])]

    return contains


def _has_words(text: str, words: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(words)}(?!\w)", text) is not None


def regex(pattern: str):
    """1.0 where `pattern` is found in the stripped completion (re.DOTALL), else 0.0."""
    compiled = re.compile(pattern, re.DOTALL)

    def regex(completions, **kwargs) -> list[float]:
        return [float(compiled.search(_text(c).strip()) is not None) for c in completions]

    return regex


def length(target: int):
    """min(words, target) / max(words, target): 1.0 at the target word count, falling smoothly on either side."""
    def length(completions, **kwargs) -> list[float]:
        return [min(n, target) / max(n, target) for n in (len(_text(c).split()) for c in completions)]

    return length


def think_format():
    """TRL's think_format_reward: 1.0 for `<think>...</think>` followed by the answer, else 0.0."""
    from trl.rewards import think_format_reward

    return think_format_reward


def _column_argument(name: str):
    def parse(arg: str | None) -> dict:
        if arg is not None and not re.fullmatch(r"[A-Za-z_][\w.-]*", arg):
            raise ValueError(f"`{name}:{arg}`: the argument is a column name such as answer")
        return {"column": arg or "answer"}

    return parse


def _pattern_argument(arg: str | None) -> dict:
    if not arg:
        raise ValueError("`regex` needs a pattern: regex:<pattern>, e.g. 'regex:^\\d+$'")
    try:
        re.compile(arg)
    except re.error as e:
        raise ValueError(f"`regex:{arg}` is not a valid regular expression ({e})") from None
    return {"pattern": arg}


def _target_argument(arg: str | None) -> dict:
    if arg is None or not arg.isdigit() or int(arg) <= 0:
        raise ValueError(f"`length` needs a target word count > 0: length:<words>, e.g. length:20 (got {arg!r})")
    return {"target": int(arg)}


def _no_argument(name: str):
    def parse(arg: str | None) -> dict:
        if arg is not None:
            raise ValueError(f"`{name}` takes no argument (got `{name}:{arg}`)")
        return {}

    return parse


# rule name -> (the rule's factory, parser of the `name:argument` text -> the factory's keyword arguments)
RULES = {"exact_match": (exact_match, _column_argument("exact_match")), "contains": (contains, _column_argument("contains")),
         "regex": (regex, _pattern_argument), "length": (length, _target_argument),
         "think_format": (think_format, _no_argument("think_format"))}


@dataclass(frozen=True)
class RewardSpec:
    """One parsed `reward_funcs` entry: kind `rule`, `function` or `model`, with the rule's keyword arguments, the
    function's source (file or module) and name, or the model folder."""

    spec: str
    kind: str
    name: str
    source: str = ""
    options: tuple = ()


def parse(spec: str) -> RewardSpec:
    """Tell which kind of reward `spec` is; nothing is imported or loaded.

    Raises:
        ValueError: a message naming the spec and the forms accepted.
    """
    spec = str(spec).strip()
    name, sep, arg = spec.partition(":")
    if name in RULES:
        return RewardSpec(spec, "rule", name, options=tuple(RULES[name][1](arg if sep else None).items()))
    if os.path.isdir(spec):
        return RewardSpec(spec, "model", os.path.basename(os.path.normpath(spec)), source=spec)
    if sep and name and arg:
        return RewardSpec(spec, "function", arg, source=name)
    raise ValueError(f"`{spec}` is not a rule, a reward-model folder or a Python function{did_you_mean(name, RULES)}: use one "
                     f"of {', '.join(RULES)}, a folder trained with stage: rm, or path/to/file.py:function or "
                     f"package.module:function")


def _load_function(spec: RewardSpec):
    """Import the function of a `function` spec (a .py file is run as a module of its own)."""
    source = spec.source
    if source.endswith(".py"):
        if not os.path.isfile(source):
            raise ValueError(f"`{spec.spec}`: file `{source}` does not exist (paths are relative to the working directory "
                             f"{os.getcwd()})")
        module_spec = importlib.util.spec_from_file_location(f"tuneforge_reward_{os.path.basename(source)[:-3]}", source)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:  # the user's file failed to import: show why, not our traceback
            raise ValueError(f"`{spec.spec}`: importing `{source}` failed: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as e:
            raise ValueError(f"`{spec.spec}`: cannot import module `{source}` ({e}); give a .py file path or an installed "
                             f"module") from None
    fn = getattr(module, spec.name, None)
    if not callable(fn):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise ValueError(f"`{spec.spec}`: `{source}` has no function `{spec.name}`{did_you_mean(spec.name, names)}")
    return fn


def _check_signature(spec: RewardSpec, fn) -> None:
    """GRPOTrainer passes prompts, completions, completion_ids, trainer_state and every column by keyword."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to inspect
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        raise ValueError(f"`{spec.spec}`: `{spec.name}{inspect.signature(fn)}` must take **kwargs: GRPOTrainer passes "
                         f"prompts, completions, completion_ids, trainer_state and every dataset column by keyword "
                         f"(e.g. def {spec.name}(completions, answer, **kwargs))")
    positional = [p.name for p in params if p.kind is p.POSITIONAL_ONLY]
    if positional:
        raise ValueError(f"`{spec.spec}`: parameter `{positional[0]}` is positional-only; rewards are called by keyword")


def _check_model_folder(spec: RewardSpec) -> None:
    """A folder saved by `stage: rm` (a LoRA adapter with its score head, or a one-label sequence classifier)."""
    from tuneforge.models.reward import reward_kind

    try:
        reward_kind(spec.source, key=KEY)
    except TuneforgeError as e:
        raise ValueError(str(e).removeprefix(f"{KEY} ")) from None


class RewardModelScore:
    """A reward model trained by `stage: rm` as a reward function: each prompt + completion conversation scored the way
    the rm stage encoded it (tuneforge.models.reward.score)."""

    def __init__(self, folder: str, reward_model):
        self.reward_model = reward_model
        self.__name__ = os.path.basename(os.path.normpath(folder))  # GRPOTrainer logs rewards/<name>/mean

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        from tuneforge.models.reward import score

        return score(self.reward_model, [list(p) + list(c) for p, c in zip(prompts, completions)])


def check(specs: list[str]) -> list[str]:
    """Problems with `reward_funcs` (one message each, naming the key), without loading any model.

    Rules are parsed, functions imported and their signatures checked, model folders read (config files only).
    """
    if not specs:
        return [f"{KEY} is empty; give at least one reward, e.g. {KEY}: [exact_match] (see `tuneforge train --help-keys`)"]
    problems = []
    for spec in specs:
        try:
            parsed = parse(spec)
            if parsed.kind == "function":
                _check_signature(parsed, _load_function(parsed))
            elif parsed.kind == "model":
                _check_model_folder(parsed)
        except ValueError as e:
            problems.append(f"{KEY}: {e}")
    return problems


def check_columns(specs: list[str], columns: list[str]) -> None:
    """The columns the rewards read exist in the data (checked once the data is loaded, before the model).

    Raises:
        TuneforgeError (key reward_funcs): an exact_match column or a function's required parameter the rows lack.
    """
    given = set(columns) | TRAINER_KWARGS
    for spec in specs:
        parsed = parse(spec)
        if parsed.kind == "rule" and "column" in dict(parsed.options):
            column = dict(parsed.options)["column"]
            if column not in columns:
                raise TuneforgeError(f"{KEY}: `{spec}` compares with column `{column}`, which the data lacks (columns: "
                                     f"{', '.join(c for c in columns if c != 'prompt_ids')}); add it or name another as "
                                     f"{parsed.name}:<column>", key=KEY)
        elif parsed.kind == "function":
            params = inspect.signature(_load_function(parsed)).parameters.values()
            missing = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                       and p.name not in given]
            if missing:
                raise TuneforgeError(f"{KEY}: `{spec}` needs `{missing[0]}`, which is neither a dataset column nor passed by "
                                     f"the trainer (columns: {', '.join(sorted(columns))})", key=KEY)


def build(specs: list[str], dtype=None, device=None) -> list:
    """The reward functions for GRPOTrainer, in the order of `specs` (already checked).

    Args:
        specs: the `reward_funcs` entries.
        dtype: torch dtype of reward models (default float32).
        device: where reward models run (default: the CPU).
    """
    funcs = []
    for spec in specs:
        parsed = parse(spec)
        if parsed.kind == "rule":
            funcs.append(RULES[parsed.name][0](**dict(parsed.options)))
        elif parsed.kind == "function":
            funcs.append(_load_function(parsed))
        else:
            from tuneforge.models.reward import load_reward_model

            reward_model = load_reward_model(parsed.source, dtype=dtype)
            if device is not None:
                reward_model.model.to(device)
            funcs.append(RewardModelScore(parsed.source, reward_model))
    return funcs


def model_folders(specs: list[str]) -> list[str]:
    """The reward-model folders among `specs` (the estimator counts them)."""
    return [p.source for p in map(parse, specs) if p.kind == "model"]
