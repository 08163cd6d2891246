"""Generation on held-out rows (`predict: true`): the rows of `eval_dataset`, or the `val_size` rows that training
holds out of `dataset` (the same seeded split), rendered with the chat template, answered greedily in batches
(left-padded, shortest first) and scored against their reference answers (metrics.py)."""

import dataclasses
import logging

from tuneforge import TuneforgeError

log = logging.getLogger(__name__)


def held_out_rows(data_cfg) -> tuple[list[dict], list]:
    """([{"prompt": messages, "answer": text, "tools": ...}], registry entries read): `eval_dataset` whole, else the
    held-out part of `dataset` by `val_size` and `seed` as training splits it. Rows without a reference answer are
    skipped (they cannot be scored).

    Raises:
        TuneforgeError (key eval_dataset): when there are no held-out rows to generate for.
    """
    from tuneforge.data import registry
    from tuneforge.data.pipeline import split
    from tuneforge.data.prompts import load_prompts

    if data_cfg.eval_dataset:
        data_cfg = dataclasses.replace(data_cfg, dataset=list(data_cfg.eval_dataset), val_size=0.0)
    elif not (data_cfg.dataset and data_cfg.val_size):
        raise TuneforgeError("predict needs held-out rows: set eval_dataset (e.g. eval_dataset: identity_eval), or dataset "
                             "with val_size (the rows training holds out)", key="eval_dataset")
    attrs = registry.resolve(data_cfg.dataset, data_cfg.dataset_dir)
    ds, _ = load_prompts(data_cfg, attrs)
    answered = ds.filter(lambda r: bool(r["answer"]), desc="rows with a reference answer")
    if len(answered) < len(ds):
        log.warning("predict: %d of %d rows have no reference answer and are skipped", len(ds) - len(answered), len(ds))
    rows = split(answered, data_cfg.val_size, data_cfg.seed).get("eval", answered)
    if len(rows) == 0:
        raise TuneforgeError("predict: no held-out row has a reference answer", key="eval_dataset")
    return [{"prompt": r["prompt"], "answer": r["answer"], "tools": r.get("tools")} for r in rows], attrs


def generate(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, repetition_penalty: float = 1.0) -> list[str]:
    """Greedy completions of rendered prompts, in batches of similar length (left-padded); results in input order."""
    import torch

    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in idx], device=device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in idx], device=device)
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                 repetition_penalty=repetition_penalty, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[row, width:], skip_special_tokens=True).strip()
    return out


def evaluate_generation(model, tokenizer, rows: list[dict], batch_size: int, generation_cfg) -> tuple[dict, list[dict]]:
    """(metrics averaged over the rows, one {prompt, label, prediction} record a row)."""
    from tuneforge.data.templates import render
    from tuneforge.evaluate.metrics import average

    prompts = [render(tokenizer, r["prompt"], add_generation_prompt=True, tools=r.get("tools")) for r in rows]
    predictions = generate(model, tokenizer, prompts, batch_size, generation_cfg.max_new_tokens, generation_cfg.repetition_penalty)
    labels = [r["answer"] for r in rows]
    metrics = {"examples": len(rows), **average(predictions, labels)}
    return metrics, [{"prompt": p, "label": l, "prediction": y} for p, l, y in zip(prompts, labels, predictions)]
