"""`tuneforge eval`: multiple-choice accuracy (choice.py), generation metrics on held-out rows (generation.py,
metrics.py) and perplexity (perplexity.py) of a base model, base + adapter, merged folder or GGUF file, loaded the
way training loads it; results with their provenance in `save_dir/results.json` (results.py).

    evaluate(cfg): read every task and dataset first (errors before the model loads) -> load the model -> score
    -> results.json + generated_predictions.jsonl -> the record

Deterministic: greedy decoding, fixed order and batches, a fixed seed."""

import logging
import time

from tuneforge.evaluate.results import compare, load, table

log = logging.getLogger("tuneforge.evaluate")

__all__ = ["compare", "evaluate", "load", "table", "wants"]


def wants(cfg) -> list[str]:
    """What the config asks to evaluate: `choice` (task or task_dir given), `generation` (predict), `perplexity`."""
    ev = cfg.eval
    out = ["choice"] if ev.task or "task_dir" in cfg.given else []
    if ev.predict or cfg.train.args.get("do_predict"):
        out.append("generation")
    if ev.perplexity_dataset:
        out.append("perplexity")
    return out


def _settings(cfg) -> dict:
    ev = cfg.eval
    return {"task": ev.task, "task_dir": ev.task_dir, "split": ev.split, "n_shot": ev.n_shot, "lang": ev.lang,
            "batch_size": ev.batch_size, "predict": "generation" in wants(cfg), "eval_dataset": cfg.data.eval_dataset,
            "dataset": cfg.data.dataset, "val_size": cfg.data.val_size, "seed": cfg.data.seed,
            "perplexity_dataset": ev.perplexity_dataset, "cutoff_len": cfg.data.cutoff_len,
            "max_new_tokens": cfg.generation.max_new_tokens, "repetition_penalty": cfg.generation.repetition_penalty,
            "template": cfg.data.template, "torch_dtype": cfg.model.torch_dtype, "quantization_bit": cfg.model.quantization_bit}


def _files(attrs) -> list[str]:
    from tuneforge.data.loaders import data_files
    from tuneforge.data.text import text_files

    return [f for a in attrs for f in (text_files(a.path) or data_files(a.path))]


def evaluate(cfg, save_dir: str | None = None, overwrite: bool | None = None) -> dict:
    """Evaluate the config's model on what it asks for; return the record written to save_dir/results.json.

    Args:
        cfg: a RunConfig loaded with purpose `eval` (or `train` with eval_before_after).
        save_dir: overrides `save_dir` (the run path writes output_dir/eval_before and eval_after); None and no
            `save_dir`: nothing is written.
        overwrite: overrides `overwrite_save_dir`.

    Raises:
        TuneforgeError: a missing or malformed task or dataset, a save_dir holding files, a missing metric package,
            each before the model loads.
    """
    import torch

    from tuneforge import __version__, preflight
    from tuneforge.data import registry
    from tuneforge.evaluate import choice, generation, metrics, perplexity, results
    from tuneforge.infer import load_for_inference

    ev, what, start = cfg.eval, wants(cfg), time.time()
    save_dir = save_dir or ev.save_dir
    if save_dir:
        results.check_save_dir(save_dir, ev.overwrite_save_dir if overwrite is None else overwrite)
    preflight.check_model(cfg)
    task = choice.load_task(ev.task, ev.task_dir, ev.split, ev.n_shot) if "choice" in what else None
    files = list(task.files) if task else []
    if "generation" in what:
        metrics.require()
        rows, attrs = generation.held_out_rows(cfg.data)
        files += _files(attrs)
    if "perplexity" in what:
        text_cfg = perplexity.text_config(cfg.data, ev.perplexity_dataset)
        text_attrs = registry.resolve(text_cfg.dataset, text_cfg.dataset_dir)
        files += _files(text_attrs)
    model, tokenizer = load_for_inference(cfg.model, template=cfg.data.template, train_args=cfg.train.args)
    torch.manual_seed(cfg.data.seed)
    out, predictions = {}, None
    if task is not None:
        log.info("multiple choice: %s %s, %d subjects, %d-shot", task.name, task.split, len(task.questions), ev.n_shot)
        out["choice"] = [choice.evaluate_task(model, tokenizer, task, ev.n_shot, ev.lang, ev.batch_size)]
    if "generation" in what:
        log.info("generating for %d held-out rows", len(rows))
        out["generation"], predictions = generation.evaluate_generation(model, tokenizer, rows, ev.batch_size, cfg.generation)
    if "perplexity" in what:
        pieces, documents = perplexity.load_pieces(text_cfg, text_attrs, tokenizer)
        out["perplexity"] = perplexity.evaluate_perplexity(model, tokenizer, pieces, documents, ev.batch_size)
    record = {"model": cfg.model.model_name_or_path, "adapter": cfg.model.adapter_name_or_path, "data_sha256": results.data_hash(files),
              "settings": _settings(cfg), "tuneforge": __version__, "seconds": round(time.time() - start, 1), "results": out}
    if save_dir:
        log.info("results in %s", results.save(save_dir, record, predictions))
    return record
