"""Activation (gradient) checkpointing, read once from the train section.

transformers 5 calls it `activation_checkpointing` (+ `_kwargs`); `gradient_checkpointing` (+ `_kwargs`) is the
deprecated alias that LLaMA-Factory configs use. Both spellings are accepted here and the Trainer gets the new
names (no deprecation warnings).

`every_n_layers` in the kwargs is transformers' partial checkpointing: only decoder layers 0, n, 2n, ... are
recomputed in backward; the others keep their activations. With memory to spare this buys speed back: on SmolLM2
(LoRA, CPU) every layer costs ~25% of the step, every second layer ~10% (benchmarks/vs_llamafactory.sh).
`tuneforge estimate` and `--fit` count the same layers.
"""

import json
import math
from typing import Any

ALIASES = (("gradient_checkpointing", "activation_checkpointing"),
           ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"))
HINT = 'e.g. `gradient_checkpointing: true` and `gradient_checkpointing_kwargs: {"every_n_layers": 2}`'


def installed_prefix() -> str:
    """`activation` when the installed TrainingArguments has `activation_checkpointing` (transformers 5.x), else
    `gradient` (older releases); resolution writes the spelling the installed library reads."""
    from tuneforge.config.train_args import training_fields

    return "activation" if "activation_checkpointing" in training_fields(own_only=True) else "gradient"


def normalize(args: dict[str, Any], prefix: str = "activation") -> dict[str, Any]:
    """`args` with both spellings moved to `prefix`_checkpointing(_kwargs); ValueError when both are set differently."""
    out = dict(args)
    for old, new in ALIASES:
        if old in out and new in out and out[old] != out[new]:
            raise ValueError(f"`{old}` and `{new}` are the same setting and disagree ({out[old]!r} vs {out[new]!r}); keep one")
        src, dst = (old, new) if prefix == "activation" else (new, old)
        if src in out:
            out[dst] = out.pop(src)
    return out


def kwargs_of(args: dict[str, Any]) -> dict[str, Any]:
    """The checkpointing kwargs as a dict (transformers also takes them as a JSON string)."""
    raw = normalize(args).get("activation_checkpointing_kwargs")
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ValueError(f"gradient_checkpointing_kwargs must be a mapping or JSON object (got {raw!r}); {HINT}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"gradient_checkpointing_kwargs must be a mapping (got {raw!r}); {HINT}")
    return dict(raw)


def every_n_layers(args: dict[str, Any]) -> int:
    """0 when checkpointing is off, else n: layers 0, n, 2n, ... are checkpointed (1 = every layer)."""
    if not normalize(args).get("activation_checkpointing"):
        return 0
    n = kwargs_of(args).get("every_n_layers", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"gradient_checkpointing_kwargs.every_n_layers must be a whole number >= 1 (got {n!r}); "
                         f"1 checkpoints every layer, 2 every second one")
    return n


def checkpointed(layer: int, n: int) -> bool:
    """Whether decoder layer `layer` is recomputed in backward (transformers' rule: index % n == 0)."""
    return n > 0 and layer % n == 0


def count(num_layers: int, n: int) -> int:
    """How many of `num_layers` decoder layers are checkpointed."""
    return 0 if n <= 0 else math.ceil(num_layers / n)


def describe(n: int) -> str:
    """`checkpointing`, `checkpointing every 2nd layer`, ... or '' when off."""
    if n <= 0:
        return ""
    if n == 1:
        return "checkpointing"
    suffix = {2: "nd", 3: "rd"}.get(n % 10 if n % 100 not in (11, 12, 13) else 0, "th")
    return f"checkpointing every {n}{suffix} layer"


def validate(args: dict[str, Any]) -> list[str]:
    """Problems with the checkpointing keys, for the config's validation pass."""
    try:
        every_n_layers(args)
        kwargs_of(args)
    except ValueError as e:
        return [str(e)]
    return []
