"""`--fit`: search method, quantization, micro-batch, gradient accumulation and checkpointing (none, every 4th or
2nd layer, every layer) for the fastest configurations whose estimate fits a memory budget. The configurations
come from the method registry: each method's `fit` entries (label, settings, speed per token relative to LoRA,
measured by benchmarks/methods.py); methods without a memory hook are skipped. The stage's memory hook, when given
(`stage_memory(cfg)`), turns each candidate into what the stage runs before it is estimated."""

import json
import math
import re
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace

from tuneforge.memory.estimate import EstimateInput, MemoryReport, estimate_shape
from tuneforge.memory.shapes import ModelShape
from tuneforge.train import checkpointing

# lora with every layer checkpointed: 276-286 vs 368-385 tokens/s (SmolLM2, CPU, tcmalloc); every 2nd layer measured
# 335-338, which the linear rule below predicts (the cost is per recomputed layer)
CHECKPOINTING_SPEED = 0.75
CHECKPOINT_EVERY = (0, 4, 2, 1)  # 0: off; n: layers 0, n, 2n, ... recomputed
_INPUT_FIELDS = {f.name: f for f in fields(EstimateInput)}


def checkpointing_speed(layers: int, every: int) -> float:
    """Relative speed with `every`-th layer checkpointed (1.0 when off)."""
    return 1.0 - (1.0 - CHECKPOINTING_SPEED) * checkpointing.count(layers, every) / max(1, layers)


@dataclass
class Candidate:
    """One configuration to try: a method's `fit` entry (label, settings, speed relative to LoRA) with its name."""

    method: str
    label: str
    settings: dict
    speed: float


def candidates() -> list[Candidate]:
    """Every registered method's `fit` configurations (registry order); methods without a memory hook are skipped."""
    from tuneforge.methods.registry import METHODS

    return [Candidate(m.name, c.label, {k: v for k, v in c.settings.items() if k != "finetuning_type"}, c.speed)
            for m in METHODS.values() if m.memory is not None for c in m.fit]


def _section_defaults(name: str) -> dict:
    from tuneforge.methods.registry import METHODS

    section = METHODS[name].section
    return asdict(section()) if section is not None else {}


def _yaml_value(v) -> str:
    """`v` as a YAML value that reads back as `v` (JSON is YAML's flow style)."""
    import yaml

    if isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.,/+-]*", v) and yaml.safe_load(v) == v:
        return v
    return json.dumps(list(v) if isinstance(v, tuple) else v)


@dataclass
class Fit:
    name: str
    x: EstimateInput
    report: MemoryReport
    speed: float
    grad_accum: int
    settings: dict = field(default_factory=dict)  # the config keys this configuration sets (beside finetuning_type)

    def yaml(self) -> list[str]:
        lines = [f"finetuning_type: {self.x.finetuning_type}"]
        lines += [f"{k}: {_yaml_value(v)}" for k, v in self.settings.items()]
        if self.x.gradient_checkpointing:
            lines.append("gradient_checkpointing: true")
            if self.x.checkpoint_every > 1:
                lines.append(f'gradient_checkpointing_kwargs: {{"every_n_layers": {self.x.checkpoint_every}}}')
        lines += [f"per_device_train_batch_size: {self.x.batch}", f"gradient_accumulation_steps: {self.grad_accum}"]
        return lines


def _candidate_input(base: EstimateInput, c: Candidate, varied: set[str]) -> tuple[EstimateInput, dict]:
    """The estimator's input for candidate `c` over `base`, and the config keys its YAML sets. The fields any candidate
    sets (optim, quantization_bit) are reset to their defaults where this one does not set them (a reset to None is
    written as `key: null`; another default, such as plain AdamW, is an upper bound of what the user's setting
    needs); the method's options are the base's for its own method, else the method's section defaults, with the
    candidate's settings on top."""
    own = {k: v for k, v in c.settings.items() if k in _INPUT_FIELDS}
    options = dict(base.options) if c.method == base.finetuning_type else _section_defaults(c.method)
    options.update({k: v for k, v in c.settings.items() if k not in _INPUT_FIELDS})
    reset = {k: _INPUT_FIELDS[k].default for k in varied if k not in own and _INPUT_FIELDS[k].default is not MISSING}
    x = replace(base, finetuning_type=c.method, options=options, **reset, **own)
    shown = dict(c.settings)
    for k in sorted(reset):  # a switch the user's config turns on and this configuration leaves off: `key: null`
        if reset[k] is None and getattr(base, k) is not None:
            shown[k] = None
    return x, shown


def stage_memory(cfg) -> Callable[[EstimateInput], EstimateInput] | None:
    """The config's stage memory hook bound to it (None when the stage has none), for `search(adjust=...)`: each
    candidate is estimated as the stage runs it (a preference pair's two rows, a reference copy unless the
    candidate's method is an adapter, generation buffers)."""
    from tuneforge.stages.registry import STAGES

    stage = STAGES.get(cfg.method.stage)
    if stage is None or stage.memory is None:
        return None
    return lambda x: stage.memory(x, cfg)


def search(shape: ModelShape, base: EstimateInput, budget: float, effective_batch: int | None = None, top: int = 5,
           adjust: Callable[[EstimateInput], EstimateInput] | None = None) -> list[Fit]:
    """The fastest fitting configurations, best first, one per method configuration (each registered method's
    `fit` entries): for each checkpointing setting the largest micro-batch (a power of two up to the effective batch)
    that fits, accumulation making up the rest; the configuration's fastest of those is kept.

    Args:
        base: the run's input in config terms (per_device_train_batch_size rows), before any stage hook.
        adjust: the stage's memory hook (`stage_memory(cfg)`), applied to every candidate before it is estimated;
            the configurations keep the config's terms (their YAML is what the user writes)."""
    effective = effective_batch or base.batch
    micro_sizes = [2**k for k in range(int(math.log2(max(1, effective))) + 1)][::-1]
    cands = candidates()
    varied = {k for c in cands for k in c.settings if k in _INPUT_FIELDS}
    fits = []
    for c in cands:
        x0, shown = _candidate_input(base, c, varied)
        options = []
        for every in CHECKPOINT_EVERY:
            for micro in micro_sizes:
                x = replace(x0, gradient_checkpointing=every > 0, checkpoint_every=max(1, every), batch=micro,
                            grad_accum=max(1, effective // micro))
                report = estimate_shape(shape, adjust(x) if adjust else x)
                if not report.known:
                    break
                if report.total <= budget:
                    small_batch = 1 - 0.05 * math.log2(effective / micro)  # fewer tokens per step: less efficient kernels
                    how = f" + {checkpointing.describe(every)}" if every else ""
                    options.append(Fit(c.label + how, x, report, c.speed * checkpointing_speed(shape.layers, every) * small_batch,
                                       max(1, effective // micro), shown))
                    break
        if options:
            fits.append(max(options, key=lambda f: f.speed))  # ties: the first (least checkpointing)
    return sorted(fits, key=lambda f: -f.speed)[:top]


def render(fits: list[Fit], budget: float) -> str:
    from tuneforge.memory.estimate import GIB

    if not fits:
        return (f"nothing fits in {budget / GIB:.1f} GiB at micro-batch 1; shorten cutoff_len, use a smaller model, "
                f"or shard over more devices (world_size + sharding: zero3)")
    out = [f"configurations that fit {budget / GIB:.1f} GiB, fastest first (speed relative to LoRA):",
           f"  {'#':<3}{'method':<52}{'micro x accum':>14}{'total GiB':>11}{'speed':>7}"]
    for i, f in enumerate(fits, 1):
        out.append(f"  {i:<3}{f.name:<52}{f'{f.x.batch} x {f.grad_accum}':>14}{f.report.total / GIB:>11.2f}{f.speed:>7.2f}")
    out.append("YAML for #1:")
    out += [f"  {line}" for line in fits[0].yaml()]
    return "\n".join(out)
