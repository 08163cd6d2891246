"""`eval_before_after: true` on a training run: the config's evaluation on the model as it starts (base, plus
adapter_name_or_path if given) and on what the run saved (base + the new adapter, or the saved model), written to
output_dir/eval_before and output_dir/eval_after and printed side by side."""

import dataclasses
import logging
import os

log = logging.getLogger("tuneforge.evaluate")

BEFORE, AFTER, COMPARISON = "eval_before", "eval_after", "eval_comparison.txt"


def before(cfg, events) -> dict:
    """Evaluate the starting model into output_dir/eval_before, once the run's own checks have passed (a training
    problem is reported before minutes of evaluation, not after)."""
    from tuneforge import preflight
    from tuneforge.evaluate import evaluate

    preflight.check(cfg)
    events.phase("evaluating", when="before")
    return evaluate(cfg, save_dir=os.path.join(cfg.output.output_dir, BEFORE), overwrite=True)


def trained_model(cfg):
    """The ModelSection of what the run saved in output_dir: an adapter over the same base, or a full model."""
    from tuneforge import methods

    out = cfg.output.output_dir
    if methods.get(cfg.method.finetuning_type).adapter:
        return dataclasses.replace(cfg.model, adapter_name_or_path=out)
    return dataclasses.replace(cfg.model, model_name_or_path=out, adapter_name_or_path=None)


def after(cfg, first: dict, events) -> str:
    """Evaluate the trained model into output_dir/eval_after; write and return the before/after table."""
    from tuneforge.evaluate import compare, evaluate

    events.phase("evaluating", when="after")
    second = evaluate(dataclasses.replace(cfg, model=trained_model(cfg)), save_dir=os.path.join(cfg.output.output_dir, AFTER),
                      overwrite=True)
    text = compare(first, second, ("before", "after"))
    path = os.path.join(cfg.output.output_dir, COMPARISON)
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    os.replace(path + ".tmp", path)
    print(text, flush=True)
    return text
