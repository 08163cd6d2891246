"""What a checkpoint remembers about its run, so a resume continues the same run or says what changed.

Each checkpoint holds `tuneforge_resume.json`: the resolved config keys that change the run's math or data order
(everything except the keys in `FREE` below), the number of processes, a hash of the tokenized training rows in order,
and the state of callbacks that keep some (`checkpoint_state()` / `restore_checkpoint_state()`, e.g. LISA's active
layers). On resume a difference is refused, listing `key: before -> after`, unless `ignore_data_skip: true` (then it
is logged, and transformers starts the current epoch's data from its beginning instead of skipping what was seen)."""

import hashlib
import json
import logging
import os

from tuneforge import TuneforgeError

log = logging.getLogger(__name__)

FILE = "tuneforge_resume.json"
# Keys that may change between a run and its resume: where it writes, what it logs and saves, how it is launched,
# evaluated and exported, and cache/worker settings. Everything else changes the run (math or data) and is checked.
FREE = {
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "plot_loss", "cache_dir", "dataset_dir",
    "overwrite_cache", "preprocessing_num_workers", "memory_check", "allocator", "supervised_logits_only",
    "llamafactory_defaults", "node_rank", "master_addr", "master_port", "watchdog_timeout_s", "report_to", "run_name",
    "disable_tqdm", "ignore_data_skip", "remove_unused_columns", "include_num_input_tokens_seen", "skip_memory_metrics",
    "ddp_timeout", "enable_jit_checkpoint", "restore_callback_states_from_checkpoint", "load_best_model_at_end",
    "metric_for_best_model", "greater_is_better", "prediction_loss_only", "per_device_eval_batch_size",
    "gradient_checkpointing", "activation_checkpointing", "gradient_checkpointing_kwargs", "activation_checkpointing_kwargs",
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
}
FREE_PREFIXES = ("logging_", "save_", "eval_", "hub_", "push_to_hub", "export_")
FREE_SECTIONS = ("output", "export", "eval")
# may change, with a warning: the learning-rate schedule is stretched or cut to the new length from the step it is at
LENGTH = {"max_steps", "num_train_epochs"}


def config_fingerprint(cfg) -> dict:
    """The resolved flat keys that change the run's math or data, as JSON values."""
    import dataclasses

    free = set(FREE)
    for name in FREE_SECTIONS:
        section = cfg.sections().get(name)
        if section is not None:
            free |= {f.name for f in dataclasses.fields(section)}
    flat = {k: v for k, v in cfg.to_flat().items() if k not in free and not k.startswith(FREE_PREFIXES)}
    return json.loads(json.dumps(flat, default=str))


def data_fingerprint(dataset) -> str | None:
    """A hash of the training rows in the order the sampler indexes them (every column; list columns by their values
    and lengths, so Arrow's chunking does not matter). None for a streamed dataset (it has no fixed rows)."""
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        return None
    streams: dict = {}
    names = sorted(dataset.column_names)
    for batch in dataset.with_format("arrow").iter(batch_size=8192):
        for name in names:
            _hash_array(batch.column(name), name, streams)
    out = hashlib.sha256(f"{len(dataset)} rows".encode())
    for key in sorted(streams):
        out.update(key.encode() + streams[key].digest())
    return out.hexdigest()[:24]


def _stream(streams: dict, key: str):
    import xxhash  # a dependency of `datasets`; ~10x sha256's speed, and this is change detection, not security

    if key not in streams:
        streams[key] = xxhash.xxh3_128()
    return streams[key]


def _int64(values):
    import numpy as np

    return values if values.dtype == np.int64 else values.astype(np.int64)


def _hash_array(arr, name: str, streams: dict) -> None:
    import numpy as np
    import pyarrow as pa

    for chunk in getattr(arr, "chunks", [arr]):
        t = chunk.type
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            lengths = chunk.value_lengths().fill_null(-1).to_numpy(zero_copy_only=False)
            _stream(streams, name + "#len").update(_int64(lengths).tobytes())
            _hash_array(chunk.flatten(), name + "[]", streams)
        elif pa.types.is_integer(t) or pa.types.is_boolean(t):
            values = chunk.fill_null(-1 if not pa.types.is_boolean(t) else False).to_numpy(zero_copy_only=False)
            _stream(streams, name).update(_int64(values).tobytes())
        elif pa.types.is_floating(t):
            values = chunk.to_numpy(zero_copy_only=False)
            _stream(streams, name).update(values.astype(np.float64).tobytes())
        else:  # strings, structs: row by row
            h = _stream(streams, name)
            for row in chunk.to_pylist():
                h.update(json.dumps(row, sort_keys=True, default=str).encode() + b"\n")


def _run_data_fingerprint(trainer) -> str | None:
    """The training data's hash, computed once per trainer (it reads every row)."""
    if not hasattr(trainer, "_tuneforge_data_fingerprint"):
        trainer._tuneforge_data_fingerprint = data_fingerprint(trainer.train_dataset)
    return trainer._tuneforge_data_fingerprint


def save(folder: str, trainer) -> None:
    """Write FILE into a checkpoint folder being saved."""
    cfg = trainer.run_config
    payload = {
        "config": config_fingerprint(cfg) if cfg is not None else None,
        "world_size": trainer.args.world_size,
        "data": _run_data_fingerprint(trainer),
        "callbacks": {type(cb).__name__: cb.checkpoint_state() for cb in trainer.callback_handler.callbacks
                      if hasattr(cb, "checkpoint_state")},
    }
    with open(os.path.join(folder, FILE), "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=1, default=str)


def differences(saved: dict, cfg, args, data: str | None) -> tuple[list[str], list[str]]:
    """(refused, allowed) lines `key: before -> after` between a checkpoint's FILE and this run (`args`: its
    TrainingArguments, whose defaults stand in for a train key one side did not set)."""
    refused, allowed = [], []
    now = config_fingerprint(cfg)
    before_cfg = saved.get("config") or {}
    for key in sorted(set(before_cfg) | set(now)):
        before = before_cfg[key] if key in before_cfg else _default(key, args)
        after = now[key] if key in now else _default(key, args)
        if before != after:
            (allowed if key in LENGTH else refused).append(f"{key}: {_show(before)} -> {_show(after)}")
    if saved.get("world_size") not in (None, args.world_size):
        refused.append(f"number of processes: {saved['world_size']} -> {args.world_size}")
    if saved.get("data") and data and saved["data"] != data:
        refused.append(f"training data (tokenized rows, in order): {saved['data']} -> {data}")
    return refused, allowed


def _default(key: str, args):
    """What a train key is when nobody sets it: ours (train_args.DEFAULTS), else the arguments class's."""
    import dataclasses

    from tuneforge.config.train_args import run_default

    fields = {f.name: f for f in dataclasses.fields(type(args))}
    value = run_default(key, fields[key]) if key in fields else None
    return json.loads(json.dumps(value, default=str))


def _show(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def check(checkpoint: str, trainer) -> None:
    """Refuse to resume from an incomplete checkpoint, or one whose run differs from this one (unless
    ignore_data_skip); restore the callbacks' saved state.

    Raises:
        TuneforgeError: naming resume_from_checkpoint, and for a changed run every `key: before -> after` and
            `ignore_data_skip: true` as the way to continue anyway.
    """
    from tuneforge.train.checkpoints import is_complete

    complete, why = is_complete(checkpoint)
    if not complete:
        raise TuneforgeError(f"resume_from_checkpoint `{checkpoint}` is incomplete: {why}; use `auto` for the newest "
                             "complete checkpoint in output_dir", key="resume_from_checkpoint")
    path = os.path.join(checkpoint, FILE)
    if not os.path.isfile(path):
        log.warning("%s has no %s (written before tuneforge recorded it): config and data changes are not checked",
                    checkpoint, FILE)
        return
    with open(path, encoding="utf-8") as fh:
        saved = json.load(fh)
    if trainer.run_config is not None:
        refused, allowed = differences(saved, trainer.run_config, trainer.args, _run_data_fingerprint(trainer))
        for line in allowed:
            log.warning("resuming %s with %s: the learning-rate schedule now runs to the new length", checkpoint, line)
        if refused and not trainer.args.ignore_data_skip:
            raise TuneforgeError(
                f"resume_from_checkpoint `{checkpoint}` belongs to a different run; these changed since it was saved:\n  "
                + "\n  ".join(refused) + "\nchange them back, start a new output_dir, or set ignore_data_skip: true to "
                "continue anyway (the current epoch's data then starts from its beginning)", key="resume_from_checkpoint")
        if refused:
            log.warning("ignore_data_skip: true: resuming %s although these changed: %s; the current epoch's data "
                        "starts from its beginning", checkpoint, "; ".join(refused))
    states = saved.get("callbacks") or {}
    for cb in trainer.callback_handler.callbacks:
        if hasattr(cb, "restore_checkpoint_state") and type(cb).__name__ in states:
            cb.restore_checkpoint_state(states[type(cb).__name__])
