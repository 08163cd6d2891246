"""Range and availability checks of `train` values that TrainingArguments accepts but that fail later (a batch of 0,
a negative learning rate, a logger that is misspelled or not installed) or silently do nothing (0 epochs)."""

from typing import Any

# key -> (lowest allowed value, whether the lowest is allowed, the fix)
BOUNDS: dict[str, tuple[float, bool, str]] = {
    "per_device_train_batch_size": (1, True, "use 1 or more rows per device"),
    "per_device_eval_batch_size": (1, True, "use 1 or more rows per device"),
    "gradient_accumulation_steps": (1, True, "1 means no accumulation"),
    "learning_rate": (0, False, "typical: 1e-4 to 1e-3 for LoRA, 1e-5 to 5e-5 for full fine-tuning"),
    "logging_steps": (0, False, "log every N steps (N > 0), or a share of the run below 1"),
    "save_steps": (0, False, "save every N steps (N > 0), or a share of the run below 1"),
    "eval_steps": (0, False, "evaluate every N steps (N > 0), or a share of the run below 1"),
    "weight_decay": (0, True, "0 turns it off"),
    "max_grad_norm": (0, True, "0 turns clipping off"),
    "warmup_steps": (0, True, "a step count, or a share of the run below 1"),
    "num_train_epochs": (0, False, "train at least part of an epoch, or set max_steps"),
    "save_total_limit": (1, True, "keep at least one checkpoint, or remove the key to keep all"),
}
# report_to integration -> the package that provides it, where the names differ
PACKAGES = {"azure_ml": "azureml-core", "flyte": "flytekit", "kubeflow": "kfp", "tensorboard": "tensorboard"}


def check(args: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for every value out of range, every unknown or missing logger, and a run with nothing to do."""
    problems = []
    for key, (low, inclusive, fix) in BOUNDS.items():
        value = args.get(key)
        if key == "num_train_epochs" and (args.get("max_steps") or -1) > 0:
            continue  # max_steps decides the length
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (value < low or (value == low and not inclusive)):
            problems.append((key, f"{key} must be {'>=' if inclusive else '>'} {low:g} (got {value:g}); {fix}"))
    max_steps = args.get("max_steps")
    if isinstance(max_steps, int) and not isinstance(max_steps, bool) and (max_steps == 0 or max_steps < -1):
        problems.append(("max_steps", f"max_steps must be > 0, or -1 to train num_train_epochs (got {max_steps})"))
    problems += _report_to(args.get("report_to"))
    return problems


def _report_to(value) -> list[tuple[str, str]]:
    if value is None:
        return []
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    if not names or names in (["none"], ["all"]):
        return []
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    from tuneforge.config.errors import did_you_mean

    known, installed = sorted(INTEGRATION_TO_CALLBACK), set(get_available_reporting_integrations())
    problems = []
    for name in names:
        if name not in known:
            problems.append(("report_to", f"report_to `{name}` is not a logger transformers knows{did_you_mean(name, known)}; "
                                          f"use none or one of {', '.join(known)}"))
        elif name not in installed:
            problems.append(("report_to", f"report_to {name} needs the {PACKAGES.get(name, name)} package: "
                                          f"pip install {PACKAGES.get(name, name)} (or report_to: none)"))
    return problems
