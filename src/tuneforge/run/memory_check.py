"""The pre-run memory check on the run's real data: the largest batch the run will see (its longest rows, packed or
padded, after cutoff_len), estimated before the model loads; a run is refused only when that batch does not fit."""

import logging
from dataclasses import dataclass

from tuneforge import TuneforgeError

log = logging.getLogger("tuneforge.memory")
REFUSE_ABOVE = 1.5  # refuse when the estimate is this far above the memory available


@dataclass
class Batch:
    """The largest micro-batch in the estimator's terms: rows x seq tokens, attention over `longest` tokens."""

    rows: int
    seq: int
    longest: int
    examples: int
    what: str


def largest_batch(cfg, stats: dict | None) -> Batch:
    """The largest batch the run will see. From tokenized data (`stats["train_longest"]`): packed, the b longest rows
    in one row; padded, b rows padded to the longest. Without data: b rows of cutoff_len (the worst case)."""
    b = int(cfg.train.get("per_device_train_batch_size", 8))
    longest = (stats or {}).get("train_longest")
    if not longest:
        return Batch(b, cfg.data.cutoff_len, cfg.data.cutoff_len, b,
                     f"worst case: {b} rows of cutoff_len {cfg.data.cutoff_len} (no tokenized data to measure)")
    top = longest[:b]
    if cfg.data.packing:
        return Batch(1, sum(top), top[0], len(top), f"the {len(top)} longest rows packed into one row of {sum(top)} tokens "
                                          f"(longest row {top[0]} tokens)")
    return Batch(len(top), top[0], top[0], len(top), f"{len(top)} rows padded to the longest row, {top[0]} tokens")


def batch_from_data(cfg) -> Batch:
    """The largest batch of the config's tokenized data, with the tokenizer alone (no model weights are loaded; a GGUF
    file's tokenizer is read from its metadata). Used by `tuneforge estimate CONFIG`."""
    from tuneforge import preflight, stages
    from tuneforge.data import apply_template
    from tuneforge.data.cache import cache_root
    from tuneforge.models.loader import load_tokenizer_only

    preflight.check(cfg)
    tokenizer = load_tokenizer_only(cfg.model, cache_root(cfg.model.cache_dir))
    apply_template(tokenizer, cfg.data.template, log)
    _, stats, _ = stages.get(cfg.method.stage).build_data(cfg, tokenizer)
    return largest_batch(cfg, stats)


def counted(what: str, before, after) -> str:
    """`what` the batch is, plus how the stage's memory hook counts it when that differs (a preference pair is two rows;
    GRPO adds the completion to the prompt)."""
    if (after.batch, after.seq) == (before.batch, before.seq):
        return what
    return f"{what}; the stage counts {after.batch} row{'s' if after.batch != 1 else ''} x {after.seq} tokens"


def estimate_for(cfg, shape, batch: Batch):
    """(MemoryReport, EstimateInput) for `batch` on a model of `shape`; the stage may adjust the input (then
    `batch.what` also says how the stage counts it)."""
    from tuneforge import stages
    from tuneforge.memory.api import input_from_config
    from tuneforge.memory.estimate import estimate_shape

    given = input_from_config(cfg, batch=batch.rows, seq=batch.seq, attention_seq=batch.longest)
    stage = stages.STAGES.get(cfg.method.stage)
    x = stage.memory(given, cfg) if stage is not None and stage.memory is not None else given
    batch.what = counted(batch.what, given, x)
    return estimate_shape(shape, x), x


def _remember(cfg, batch: Batch) -> None:
    """Keep the run's largest batch for a later `tuneforge estimate` of this config (it then skips tokenizing)."""
    import dataclasses

    from tuneforge.distributed import is_main_process
    from tuneforge.run import batch_memo

    if is_main_process():
        batch_memo.remember(cfg, batch_memo.key(cfg), dataclasses.replace(batch))


def check(cfg, folder: str, stats: dict | None, events=None):
    """Estimate the run's largest batch and refuse when it is far above the memory available.

    Raises:
        TuneforgeError (key memory_check): with the estimate, the batch it is for, and configurations that fit.
    """
    from tuneforge.memory import GIB, device_memory
    from tuneforge.memory.shapes import load_shape

    batch = largest_batch(cfg, stats)
    if stats is not None:
        _remember(cfg, batch)
    try:
        shape = load_shape(folder)
    except TuneforgeError as e:
        log.info("memory estimate skipped: %s", e)
        return None
    report, x = estimate_for(cfg, shape, batch)
    available, what = device_memory(available_only=True)
    if not getattr(report, "known", True):
        log.info("memory estimate unknown: %s", report.detail.get("unknown", "the method has no memory hook"))
        if events is not None:
            events.emit("memory", known=False, reason=report.detail.get("unknown"), batch=batch.what)
        return report
    log.info("memory estimate: %.2f GiB, peak while %s (weights %.2f, gradients %.2f, optimizer %.2f, activations %.2f, "
             "overhead %.2f, process %.2f; loading %.2f) of %.1f GiB %s available; largest batch: %s",
             report.total / GIB, "loading" if report.phase == "load" else "training", report.weights / GIB,
             report.gradients / GIB, report.optimizer / GIB, report.activations / GIB, report.overhead / GIB,
             report.process / GIB, report.load / GIB, available / GIB, what, batch.what)
    if events is not None:
        events.emit("memory", known=True, total_gib=round(report.total / GIB, 3), available_gib=round(available / GIB, 3),
                    peak_phase=report.phase, batch=batch.what)
    if cfg.method.memory_check and report.total > REFUSE_ABOVE * available:
        from tuneforge.memory.fit import render, search, stage_memory

        from dataclasses import replace

        # --fit searches micro-batches of examples: give it the batch as rows of the longest example
        rows = replace(x, batch=batch.examples, seq=batch.longest, attention_seq=None)
        effective = batch.examples * int(cfg.train.get("gradient_accumulation_steps", 1))
        advice = render(search(shape, rows, available, effective, top=3, adjust=stage_memory(cfg)), available)
        raise TuneforgeError(f"this run needs about {report.total / GIB:.1f} GiB (activations {report.activations / GIB:.2f}) "
                             f"for its largest batch ({batch.what}) but {available / GIB:.1f} GiB of {what} is available.\n"
                             f"{advice}\n(set memory_check: false to start anyway)", key="memory_check")
    return report
