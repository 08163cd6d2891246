"""Pieces every stage shares: load tokenizer and model, build the Trainer, save artifacts."""

import logging
import os

import torch

from tuneforge import methods, models
from tuneforge.config.train_args import build_training_arguments
from tuneforge.data import apply_template
from tuneforge.data.cache import cache_root
from tuneforge.models.arch import count_parameters
from tuneforge.train import allocator, artifacts
from tuneforge.train.callbacks import JsonlLogger, TokenCounter
from tuneforge.train.procstats import peak_rss_gib, seconds_since_process_start

log = logging.getLogger(__name__)


def load_tokenizer(cfg):
    """(local model folder, tokenizer with the configured chat template)."""
    folder = models.local_folder(cfg.model, cache_root(cfg.model.cache_dir))
    tokenizer = models.load_tokenizer(folder, cfg.model)
    apply_template(tokenizer, cfg.data.template, log)
    return folder, tokenizer


def load_model(cfg, folder):
    """The model with the method applied (which parameters train). Seeded first, so adapter and virtual-token
    initialisation is the same on every run of the same config."""
    from transformers import set_seed

    set_seed(cfg.data.seed)
    attn = None
    if cfg.data.packing and cfg.model.attn_implementation == "sdpa":
        from tuneforge.models import packed_attention

        attn = packed_attention.register()  # SDPA per packed example instead of one masked square
    model = models.load_model(folder, cfg.model, models.resolve_dtype(cfg.model, cfg.train.args), attn)
    model = methods.get(cfg.method.finetuning_type).apply(model, cfg)
    trainable, total = count_parameters(model)
    log.info("method %s: %s trainable of %s parameters (%.3f%%)", cfg.method.finetuning_type, f"{trainable:,}", f"{total:,}",
             100 * trainable / max(total, 1))
    return model


def build_trainer(cfg, model, tokenizer, datasets: dict, collator, trainer_cls=None):
    """A Hugging Face Trainer with the method's optimizer groups and callbacks plus our log callbacks."""
    from tuneforge.train.trainer import SupervisedLossTrainer

    method = methods.get(cfg.method.finetuning_type)
    args = build_training_arguments(cfg, overrides=method.training_args(cfg))
    optim = getattr(args.optim, "value", args.optim)
    if "paged" in optim and not torch.cuda.is_available():
        log.warning("optim %s pages optimizer state through CUDA unified memory; on the CPU there is nothing to page to, "
                    "so bitsandbytes keeps the state in ordinary memory (same numbers, no paging)", optim)
    optimizer = method.optimizer(model, cfg, args)
    counter = TokenCounter()
    trainer = (trainer_cls or SupervisedLossTrainer)(
        model=model, args=args, train_dataset=datasets["train"], eval_dataset=datasets.get("eval"),
        processing_class=tokenizer, data_collator=collator, optimizers=(optimizer, None),
        callbacks=[JsonlLogger(cfg.output.output_dir), counter, *method.callbacks(cfg)],
    )
    trainer.token_counter = counter
    trainer.supervised_logits_only = cfg.method.supervised_logits_only
    return trainer


def train_and_save(cfg, trainer, resume: str | None, extra_metrics: dict) -> dict:
    """Train, evaluate if there is held-out data, then write model, tokenizer, config, plot and all_results.json (last)."""
    out = cfg.output.output_dir
    artifacts.save_config(cfg, out)
    malloc = allocator.report(cfg.method.allocator)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    counter = trainer.token_counter
    tokens = trainer.state.num_input_tokens_seen - counter.tokens_at_start
    metrics["train_tokens"] = tokens
    metrics["train_tokens_per_second"] = round(tokens / max(metrics.get("train_runtime", 0.0), 1e-9), 2)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    if not methods.get(cfg.method.finetuning_type).save(trainer.model, out, cfg):
        trainer.save_model(out)  # adapter or model (safetensors) and the tokenizer with its chat template
    else:
        trainer.processing_class.save_pretrained(out)
    trainer.save_state()
    trainable, total = count_parameters(trainer.model)
    up = seconds_since_process_start()
    metrics.update({"trainable_params": trainable, "total_params": total, "peak_rss_gib": round(peak_rss_gib(), 3),
                    "first_step_s": round(counter.first_step_time, 2) if counter.first_step_time is not None else None,
                    "first_step_since_process_start_s": (round(counter.first_step_since_process_start, 2)
                                                         if counter.first_step_since_process_start is not None else None),
                    "process_wall_s": round(up, 1) if up is not None else None, "malloc": malloc, **extra_metrics})
    if cfg.output.plot_loss and trainer.is_world_process_zero():
        artifacts.plot_loss(out)
    if trainer.is_world_process_zero():
        artifacts.save_results(out, metrics)
    log.info("saved to %s", os.path.abspath(out))
    return metrics
