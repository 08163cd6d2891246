"""`--fit`: search method, quantization, micro-batch, gradient accumulation and checkpointing (none, every 4th or
2nd layer, every layer) for the fastest configurations whose estimate fits a memory budget, one per method."""

import math
from dataclasses import dataclass, replace

from tuneforge.memory.estimate import EstimateInput, MemoryReport, estimate_shape
from tuneforge.memory.shapes import ModelShape
from tuneforge.train import checkpointing

# Relative training speed per token (lora = 1.0), from benchmarks/methods.py on SmolLM2 (CPU, fp32).
CANDIDATES = [
    ("full", {"finetuning_type": "full"}, 0.65),
    ("full + 8-bit AdamW", {"finetuning_type": "full", "optim": "adamw_bnb_8bit"}, 0.34),
    ("galore", {"finetuning_type": "galore"}, 0.40),
    ("lisa", {"finetuning_type": "lisa"}, 1.00),
    ("lora", {"finetuning_type": "lora"}, 1.00),
    ("lora + 8-bit AdamW", {"finetuning_type": "lora", "optim": "adamw_bnb_8bit"}, 0.90),
    ("qlora 8-bit", {"finetuning_type": "lora", "quantization_bit": 8}, 0.96),
    ("qlora 4-bit", {"finetuning_type": "lora", "quantization_bit": 4}, 0.89),
    ("freeze", {"finetuning_type": "freeze"}, 1.95),
]
# lora with every layer checkpointed: 276-286 vs 368-385 tokens/s (SmolLM2, CPU, tcmalloc); every 2nd layer measured
# 335-338, which the linear rule below predicts (the cost is per recomputed layer)
CHECKPOINTING_SPEED = 0.75
CHECKPOINT_EVERY = (0, 4, 2, 1)  # 0: off; n: layers 0, n, 2n, ... recomputed


def checkpointing_speed(layers: int, every: int) -> float:
    """Relative speed with `every`-th layer checkpointed (1.0 when off)."""
    return 1.0 - (1.0 - CHECKPOINTING_SPEED) * checkpointing.count(layers, every) / max(1, layers)


@dataclass
class Fit:
    name: str
    x: EstimateInput
    report: MemoryReport
    speed: float
    grad_accum: int

    def yaml(self) -> list[str]:
        lines = [f"finetuning_type: {self.x.finetuning_type}"]
        if self.x.quantization_bit:
            lines.append(f"quantization_bit: {self.x.quantization_bit}")
        if "8bit" in self.x.optim:
            lines.append(f"optim: {self.x.optim}")
        if self.x.gradient_checkpointing:
            lines.append("gradient_checkpointing: true")
            if self.x.checkpoint_every > 1:
                lines.append(f'gradient_checkpointing_kwargs: {{"every_n_layers": {self.x.checkpoint_every}}}')
        lines += [f"per_device_train_batch_size: {self.x.batch}", f"gradient_accumulation_steps: {self.grad_accum}"]
        return lines


def search(shape: ModelShape, base: EstimateInput, budget: float, effective_batch: int | None = None, top: int = 5) -> list[Fit]:
    """The fastest fitting configurations, best first, one per method: for each checkpointing setting the largest
    micro-batch (a power of two up to the effective batch) that fits, accumulation making up the rest; the method's
    fastest of those is kept."""
    effective = effective_batch or base.batch
    micro_sizes = [2**k for k in range(int(math.log2(max(1, effective))) + 1)][::-1]
    fits = []
    for name, change, speed in CANDIDATES:
        options = []
        for every in CHECKPOINT_EVERY:
            for micro in micro_sizes:
                x = replace(base, **change, gradient_checkpointing=every > 0, checkpoint_every=max(1, every), batch=micro,
                            grad_accum=max(1, effective // micro))
                if "optim" not in change:
                    x.optim = "adamw_torch"
                report = estimate_shape(shape, x)
                if report.total <= budget:
                    small_batch = 1 - 0.05 * math.log2(effective / micro)  # fewer tokens per step: less efficient kernels
                    how = f" + {checkpointing.describe(every)}" if every else ""
                    options.append(Fit(name + how, x, report, speed * checkpointing_speed(shape.layers, every) * small_batch,
                                       max(1, effective // micro)))
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
