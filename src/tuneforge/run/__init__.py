"""The one run path: `tuneforge.run.train(cfg)` is what `tuneforge train`, the Board and the tests call.

    resolve -> output folder check -> [events.jsonl opened] -> preflight -> model folder (GGUF converted once)
    -> tokenizer -> stage data (tokenized, with progress) -> memory check on the real largest batch -> model + method
    -> stage trainer -> train -> save (model or adapter, tokenizer, resolved config, trainer log, plot, all_results.json)

Every phase is appended to output_dir/events.jsonl (see run/events.py), ending in `finished` or `failed` (with the
error and the config key it is about), so another process can follow the run."""

import logging
import os
from typing import Any, NamedTuple

from tuneforge.run.events import EVENTS_FILE, EventLog, follow, read_events, state

log = logging.getLogger("tuneforge.run")

__all__ = ["EVENTS_FILE", "EventLog", "Prepared", "build", "follow", "model_folder", "read_events", "state", "train", "train_and_save"]


class Prepared(NamedTuple):
    """A run built up to its first step: the trainer, the resolved config, the data stats."""

    trainer: Any
    cfg: Any
    stats: dict


def train(cfg) -> dict:
    """Run one training job described by a validated RunConfig; return its final metrics (also in
    output_dir/all_results.json).

    Raises:
        ConfigError / TuneforgeError: a problem the user can fix, naming the key; it is also the run's `failed` event
            (except when output_dir belongs to another run: nothing is written there then).
    """
    from tuneforge import config
    from tuneforge.config.resolve import changed_keys
    from tuneforge.preflight import check_output

    cfg = config.resolve(cfg)
    check_output(cfg)  # a finished or unfinished run in output_dir is refused before anything is written there
    events = EventLog(cfg.output.output_dir)
    events.emit("started", stage=cfg.method.stage, finetuning_type=cfg.method.finetuning_type, pid=os.getpid(),
                output_dir=os.path.abspath(cfg.output.output_dir), resume_from_checkpoint=cfg.output.resume_from_checkpoint,
                resolved=changed_keys(cfg))
    try:
        if cfg.eval.eval_before_after:
            from tuneforge.evaluate import around_training

            first = around_training.before(cfg, events)
        metrics = train_and_save(build(cfg, events), events)
        if cfg.eval.eval_before_after:
            around_training.after(cfg, first, events)
    except BaseException as e:
        events.failed(e)
        raise
    events.emit("finished", metrics=metrics)
    return metrics


def build(cfg, events: EventLog | None = None) -> Prepared:
    """Everything before the first step: preflight, model folder, tokenizer, the stage's data, the memory check on its
    real largest batch, the model with the method applied, the stage's trainer with the run's callbacks."""
    from tuneforge import config, preflight, stages
    from tuneforge.distributed import fsdp, fsdp_trainer
    from tuneforge.run.hooks import run_callbacks
    from tuneforge.run.memory_check import check as memory_check
    from tuneforge.stages.common import load_model, load_tokenizer
    from tuneforge.train.callbacks import EventCallback, JsonlLogger, TokenCounter

    cfg = config.resolve(cfg)
    events = events or EventLog(cfg.output.output_dir, enabled=False)
    preflight.check(cfg)
    stage = stages.get(cfg.method.stage)
    folder = model_folder(cfg, events)
    tokenizer = load_tokenizer(cfg, folder)
    events.phase("tokenizing")
    datasets, stats, collator = stage.build_data(cfg, tokenizer, events.progress("tokenizing"))
    events.phase("memory_check")
    memory_check(cfg, folder, stats, events)
    events.phase("loading")
    model = fsdp.maybe_shard(cfg, (stage.load_model or load_model)(cfg, folder))  # FSDP2 on the CPU; else unchanged
    counter = TokenCounter()
    trainer = stage.build_trainer(fsdp.trainer_config(cfg), model, tokenizer, datasets, collator,
                                  [JsonlLogger(cfg.output.output_dir), counter, EventCallback(events), *run_callbacks(cfg, events)])
    trainer = fsdp_trainer.adapt_trainer(trainer)  # a sharded model: no DDP wrap, gathered saves
    trainer.token_counter = counter
    return Prepared(trainer, cfg, stats)


def model_folder(cfg, events=None) -> str:
    """The local HF folder of the model; a GGUF file is converted once (the `converting_model` phase)."""
    from tuneforge import models
    from tuneforge.data.cache import cache_root
    from tuneforge.models import gguf

    source = models.resolve(cfg.model.model_name_or_path)
    if source.gguf_file and events is not None:
        folder = gguf.cached_folder(source, cache_root(cfg.model.cache_dir))
        if not os.path.isfile(os.path.join(folder, "config.json")):
            events.phase("converting_model", source=source.path)
    return models.local_folder(cfg.model, cache_root(cfg.model.cache_dir))


def train_and_save(prepared: Prepared, events: EventLog | None = None) -> dict:
    """Train, evaluate if there is held-out data, then write model, tokenizer, config, plot and all_results.json (last)."""
    from tuneforge import methods
    from tuneforge.distributed import is_main_process
    from tuneforge.models.arch import count_parameters
    from tuneforge.train import allocator, artifacts
    from tuneforge.train.procstats import peak_rss_gib, seconds_since_process_start

    trainer, cfg, stats = prepared
    events = events or EventLog(cfg.output.output_dir, enabled=False)
    out, counter = cfg.output.output_dir, trainer.token_counter
    artifacts.save_config(cfg, out)
    malloc = allocator.report(cfg.method.allocator)
    result = trainer.train(resume_from_checkpoint=cfg.output.resume_from_checkpoint)
    metrics = dict(result.metrics)
    tokens = trainer.state.num_input_tokens_seen - counter.tokens_at_start
    metrics["train_tokens"] = tokens
    metrics["train_tokens_per_second"] = round(tokens / max(metrics.get("train_runtime", 0.0), 1e-9), 2)
    if trainer.eval_dataset is not None:
        events.phase("evaluating")
        metrics.update(trainer.evaluate())
    events.phase("saving")
    if not methods.get(cfg.method.finetuning_type).save(trainer.model, out, cfg):
        trainer.save_model(out)  # adapter or model (safetensors) and the tokenizer with its chat template
    elif is_main_process():
        trainer.processing_class.save_pretrained(out)
    trainer.save_state()
    trainable, total = count_parameters(trainer.model)
    up = seconds_since_process_start()
    metrics.update({"trainable_params": trainable, "total_params": total, "peak_rss_gib": round(peak_rss_gib(), 3),
                    "first_step_s": round(counter.first_step_time, 2) if counter.first_step_time is not None else None,
                    "first_step_since_process_start_s": (round(counter.first_step_since_process_start, 2)
                                                         if counter.first_step_since_process_start is not None else None),
                    "process_wall_s": round(up, 1) if up is not None else None, "malloc": malloc,
                    "train_examples": stats.get("train_examples"), "dataset_supervised_tokens": stats.get("train_supervised_tokens")})
    if cfg.output.plot_loss:
        artifacts.plot_loss(out)
    artifacts.save_results(out, metrics)
    log.info("saved to %s", os.path.abspath(out))
    return metrics
