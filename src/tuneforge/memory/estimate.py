"""The analytic memory estimator: weights, gradients, optimizer states, activations (with the logits and loss
buffers) and overhead, from a model's config.json alone. What a method trains and keeps comes from its registered
`memory(shape, x)` hook (a `footprint.Footprint`); a method without one gets a report marked unknown.

Two conventions:
- `realistic` (default): what PyTorch really keeps: the real architecture (GQA, gated MLP widths, tied
  embeddings), gradients, fp32 master weights where they exist, the tensors autograd saves per layer,
  vocabulary-sized fp32 buffers around the loss, framework and allocator overhead. On the CPU the total is the whole
  process's peak RSS (memory/process.py): its baseline, what the malloc keeps, the checkpoint's file pages, and
  max(load peak, training peak); `whole_process=False` gives the tensors and framework alone (CPU_FRAMEWORK, SLACK).
- `article`: the seed article's accounting (bf16 weights, fp32 AdamW states, no gradients, Korthikanti
  activations s*b*h*(34 + 5*a*s/h) per layer at 2 bytes per unit; checkpointing keeps sqrt(L) layers).
"""

import math
from dataclasses import dataclass, field, fields

from tuneforge.config.schema import MethodSection
from tuneforge.memory import process
from tuneforge.memory.footprint import ADAPTER, BYTES, COPY, WEIGHT, Footprint, adamw_bytes, value_bytes
from tuneforge.memory.shapes import ModelShape
from tuneforge.memory.sharding import shard, sharded_overhead
from tuneforge.models.heads import CHUNK_BYTES, PLAIN_HEAD_MODEL_TYPES
from tuneforge.train import checkpointing

GIB = 2**30
SHARDINGS = ("none", "ddp", "zero1", "zero2", "zero3", "fsdp")
LOSS_BUFFERS = 2  # vocabulary-sized fp32 buffers alive at the loss peak (fitted: benchmarks/estimator_accuracy.py)
CPU_FRAMEWORK = 0.15  # GiB: libraries loaded on first use, tokenizer, data, Trainer (fitted likewise)
SLACK = 0.05  # allocator slack on activations


@dataclass
class EstimateInput:
    """Everything the estimate depends on; built from a RunConfig (`memory.api.input_from_config`) or flags.

    `options` are the chosen method's config section values (`dataclasses.asdict(cfg.method_section())`); the
    method's memory hook reads them over its section's defaults; they are checked against that section:
    `EstimateInput(finetuning_type=name, options={option: value})`."""

    finetuning_type: str = MethodSection.finetuning_type  # the config's default method
    batch: int = 4
    seq: int = 512
    dtype: str = "float32"  # weight dtype of the base
    autocast: str | None = None  # "bfloat16"/"float16" when training with mixed precision over fp32 weights
    device: str = "cpu"  # "cpu" or "cuda"
    quantization_bit: int | None = None
    double_quantization: bool = True
    optim: str = "adamw_torch"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1  # with checkpointing: layers 0, n, 2n, ... are recomputed (transformers' every_n_layers)
    attn_implementation: str = "sdpa"
    grad_accum: int = 1
    world_size: int = 1
    sharding: str = "none"
    supervised_logits_only: bool = True  # the trainer's fused, chunked head + loss where the architecture allows
    options: dict = field(default_factory=dict)  # the method's section values
    attention_seq: int | None = None  # longest example in a row (packed rows attend per example); None: seq
    # what the stage adds (its `memory(x, cfg)` hook sets these): frozen copies of the whole base at the weight dtype
    # (a reference model, a separate reward model), and named extra bytes (a value head, generation caches)
    reference_copies: float = 0.0
    extra: dict = field(default_factory=dict)
    # the whole process on the CPU (memory/process.py): the malloc the run uses (`train.allocator.planned`), and the
    # checkpoint on disk (None: every parameter at checkpoint_dtype; checkpoint_dtype None: the weight dtype)
    malloc: str = "glibc"
    checkpoint_bytes: float | None = None
    checkpoint_dtype: str | None = None
    whole_process: bool = True  # False: tensors and framework only, as the process's RSS above its baseline

    def __post_init__(self):
        _check_options(self.finetuning_type, self.options)


def _check_options(name: str, extra: dict) -> None:
    from tuneforge.methods.registry import METHODS

    method = METHODS.get(name)
    if method is None:
        return  # an unknown method: its estimate is marked unknown anyway
    allowed = {f.name for f in fields(method.section)} if method.section is not None else set()
    wrong = sorted(set(extra) - allowed)
    if wrong:
        raise ValueError(f"EstimateInput options {', '.join(wrong)} are not options of finetuning_type {name} "
                         f"({', '.join(sorted(allowed)) or 'it has none'})")


@dataclass
class MemoryReport:
    """Bytes by category (GiB in `to_dict`), with the arithmetic behind each in `detail`. `known` is False when the
    method cannot be counted (no memory hook): every category is then 0 and `detail["unknown"]` says why."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float
    trainable_params: int
    total_params: int
    convention: str
    detail: dict = field(default_factory=dict)
    overlap: float = 0.0  # bytes that never coexist (gradients fill as backward frees activations)
    known: bool = True
    process: float = 0.0  # CPU: interpreter, libraries and tokenizer before the model loads
    load: float = 0.0  # CPU: the peak while the model loads (process included); 0 when not modelled

    @property
    def train_peak(self) -> float:
        return self.process + self.weights + self.gradients + self.optimizer + self.activations + self.overhead - self.overlap

    @property
    def total(self) -> float:
        """The peak: max(load peak, training peak)."""
        return max(self.train_peak, self.load)

    @property
    def phase(self) -> str:
        """Where the peak is: "load" or "train"."""
        return "load" if self.load > self.train_peak else "train"

    def to_dict(self) -> dict:
        out = {f"{k}_gib": round(getattr(self, k) / GIB, 3) for k in ("weights", "gradients", "optimizer", "activations", "overhead")}
        out["total_gib"] = round(self.total / GIB, 3)
        out["overlap_gib"] = round(self.overlap / GIB, 3)
        out.update(process_gib=round(self.process / GIB, 3),
                   load_peak_gib=round(self.load / GIB, 3), train_peak_gib=round(self.train_peak / GIB, 3), peak_phase=self.phase)
        out.update(trainable_params=self.trainable_params, total_params=self.total_params, convention=self.convention,
                   known=self.known, detail=self.detail)
        return out


# ---------------------------------------------------------------- the method's footprint

class UnknownMethod(ValueError):
    """The method cannot be counted: not registered, or registered without a memory hook."""


def footprint(shape: ModelShape, x: EstimateInput) -> Footprint:
    """What the method trains and keeps, from its registered `memory(shape, x)` hook.

    Raises:
        UnknownMethod: the method is not registered or has no memory hook.
    """
    from tuneforge.methods.registry import METHODS

    method = METHODS.get(x.finetuning_type)
    if method is None:
        raise UnknownMethod(f"finetuning_type {x.finetuning_type} is not registered; the estimate is skipped")
    if method.memory is None:
        raise UnknownMethod(f"finetuning_type {x.finetuning_type} has no memory hook; the estimate is skipped")
    fp = method.memory(shape, x)
    if not isinstance(fp, Footprint):
        raise UnknownMethod(f"the memory hook of finetuning_type {x.finetuning_type} returned {type(fp).__name__}, "
                            f"not a Footprint; the estimate is skipped")
    return fp


def trainable_params(shape: ModelShape, x: EstimateInput) -> int:
    """How many parameters the method trains (adapters included).

    Raises:
        UnknownMethod (a ValueError): the method has no memory hook.
    """
    return footprint(shape, x).trainable


def _quantized_bytes_per_param(x: EstimateInput) -> float:
    """4-bit: half a byte + one fp32 absmax per 64 values (DQ: one byte per 64, plus fp32 per 256 blocks);
    8-bit: one byte + an fp32 scale per row (counted as ~0)."""
    if x.quantization_bit == 4:
        return 0.5 + (1 / 64 + 4 / (64 * 256) if x.double_quantization else 4 / 64)
    return 1.0


def weight_bytes(shape: ModelShape, x: EstimateInput, detail: dict, fp: Footprint | None = None) -> float:
    fp = fp or footprint(shape, x)
    b = BYTES[x.dtype]
    linear = shape.layers * shape.layer_linear_params
    other = shape.total_params - linear
    if x.quantization_bit:
        base = linear * _quantized_bytes_per_param(x) + other * b
        per_linear = [o for _, o in shape.linears().values()]
        if x.quantization_bit == 8:
            base += shape.layers * sum(per_linear) * 4  # an fp32 scale per output row
        elif x.double_quantization:
            base += shape.layers * len(per_linear) * 256 * 4  # each weight's 256-entry code book for its constants
        detail["weights"] = f"{linear:,} linear params at {_quantized_bytes_per_param(x):.4f} B ({x.quantization_bit}-bit) + {other:,} at {b} B"
    else:
        base = shape.total_params * b
        detail["weights"] = f"{shape.total_params:,} params x {b} B ({x.dtype})"
    adapters, copies = fp.values(ADAPTER), fp.values(COPY)
    if adapters:  # adapters live in fp32 (peft upcasts them)
        base += adapters * 4
        detail["weights"] += f" + {adapters:,} adapter params x 4 B"
    if copies:  # trainable copies beside their frozen originals (peft modules_to_save)
        base += copies * b
        detail["weights"] += f" + {copies:,} trainable copies x {b} B"
    return base


# ---------------------------------------------------------------- gradients and optimizer states

def gradient_bytes(shape: ModelShape, x: EstimateInput, detail: dict, fp: Footprint | None = None) -> float:
    fp = fp or footprint(shape, x)
    if fp.gradient_bytes is not None:
        detail["gradients"] = fp.detail.get("gradients", "as the method counts them")
        return fp.gradient_bytes
    by_size: dict[int, int] = {}
    for t in fp.tensors:
        by_size[value_bytes(t, x)] = by_size.get(value_bytes(t, x), 0) + t.values
    detail["gradients"] = " + ".join(f"{n:,} trainable x {b} B" for b, n in sorted(by_size.items(), reverse=True)) or "nothing trains"
    return sum(b * n for b, n in by_size.items())


def optimizer_bytes(shape: ModelShape, x: EstimateInput, detail: dict, fp: Footprint | None = None) -> float:
    fp = fp or footprint(shape, x)
    if fp.optimizer_bytes is not None:
        detail["optimizer"] = fp.detail.get("optimizer", "as the method counts them")
        return fp.optimizer_bytes
    n = fp.trainable
    total = adamw_bytes(fp.tensors, x)
    master = _master_weights(x) and fp.values(WEIGHT, COPY)
    if master:
        total += fp.values(WEIGHT, COPY) * 4
    detail["optimizer"] = (f"AdamW{' 8-bit' if '8bit' in x.optim else ''} states for {n:,} trainable params"
                           + (" + fp32 master weights" if master else "") + (" (paged: spills to host memory under pressure)"
                                                                             if "paged" in x.optim else ""))
    return total


def _master_weights(x: EstimateInput) -> bool:
    """ZeRO/FSDP mixed precision keeps an fp32 master copy of 16-bit trainable weights (not of fp32 adapters)."""
    return x.sharding in ("zero1", "zero2", "zero3", "fsdp") and x.dtype != "float32"


# ---------------------------------------------------------------- activations

def layer_activation_bytes_per_token(shape: ModelShape, x: EstimateInput) -> float:
    """Tensors autograd keeps for one decoder layer, per token: the two normalised inputs (2h), q, the attention
    output and its contiguous copy (3 q_dim), k and v (2 kv_dim), the MLP's gate, up and product (3 I); attention
    probabilities (a s per token) are kept by eager attention and by SDPA on the CPU (its math path); on CUDA SDPA
    uses flash/memory-efficient kernels that keep none. Checked against measured peaks by
    benchmarks/estimator_accuracy.py (SmolLM2, a GQA and a large-vocabulary model)."""
    d = BYTES[x.autocast] if x.autocast else BYTES[x.dtype]
    units = 2 * shape.hidden + 3 * shape.q_dim + 2 * shape.kv_dim + 3 * shape.intermediate
    if x.attn_implementation == "eager" or x.device == "cpu":
        units += shape.heads * (x.attention_seq or x.seq)  # packed rows: probabilities per example
    return units * d


def frozen_layer_saving_per_token(shape: ModelShape, x: EstimateInput) -> float:
    """A layer in the backward graph without trainable weights keeps no linear inputs: the two normalised
    inputs, the o_proj input and the down_proj input (2h + q_dim + I) are not saved."""
    d = BYTES[x.autocast] if x.autocast else BYTES[x.dtype]
    return (2 * shape.hidden + shape.q_dim + shape.intermediate) * d


def activation_bytes(shape: ModelShape, x: EstimateInput, detail: dict, fp: Footprint | None = None) -> float:
    fp = fp or footprint(shape, x)
    tokens = x.batch * x.seq + x.batch * fp.extra_tokens
    per_layer = layer_activation_bytes_per_token(shape, x) * tokens
    frozen_per_layer = per_layer - frozen_layer_saving_per_token(shape, x) * tokens
    # layers below the backward graph keep nothing; trained layers keep their linears' inputs, frozen ones less
    trained = min(fp.trained_layers, shape.layers)
    frozen = min(fp.frozen_layers, shape.layers - trained)
    d = BYTES[x.autocast] if x.autocast else BYTES[x.dtype]
    graph_layers = trained + frozen
    if x.gradient_checkpointing:
        # checkpointed layers keep only their input, plus one layer's activations while it is recomputed; the others
        # keep everything (worst case: the trained layers are among the kept ones)
        first = shape.layers - graph_layers  # the backward graph is the top layers
        n = max(1, x.checkpoint_every)
        ckpt = sum(checkpointing.checkpointed(i, n) for i in range(first, shape.layers))
        kept = graph_layers - ckpt
        kept_trained = min(trained, kept)
        layers = (ckpt * shape.hidden * d * tokens + kept_trained * per_layer + (kept - kept_trained) * frozen_per_layer
                  + (per_layer if ckpt else 0))
        how = f"checkpointing{f' every {n}' if n > 1 else ''}: " + ", ".join(
            ([f"{ckpt} layer inputs + one layer recomputed"] if ckpt else [])
            + ([f"{kept} layers kept x {per_layer / 2**20:.1f} MiB"] if kept else []))
    else:
        layers = trained * per_layer + frozen * frozen_per_layer
        how = f"{trained} layers x {per_layer / 2**20:.1f} MiB" + (f" + {frozen} frozen x {frozen_per_layer / 2**20:.1f} MiB" if frozen else "")
    embeddings = tokens * shape.hidden * d * 2  # embedding output and final norm input
    if x.supervised_logits_only and shape.model_type in PLAIN_HEAD_MODEL_TYPES:
        # one chunk of fp32 logits and its exp temporary; a trained head adds its fp32 gradient built in forward
        chunk = min(CHUNK_BYTES, x.batch * x.seq * shape.vocab * 4)
        head_grad = shape.vocab * shape.hidden * 4 if fp.head_gradient else 0
        logits = 2 * chunk + head_grad
        detail["activations"] = (f"{how}; fused chunked loss: 2 x {chunk / 2**20:.0f} MiB logits chunk"
                                 + (f" + head gradient {head_grad / GIB:.3f} GiB" if head_grad else ""))
    else:
        logits = LOSS_BUFFERS * x.batch * x.seq * shape.vocab * 4
        detail["activations"] = f"{how}; logits/loss buffers {LOSS_BUFFERS} x b x s x vocab x 4 B = {logits / GIB:.3f} GiB"
    detail["logits_gib"] = round(logits / GIB, 3)
    return layers + logits + embeddings


# ---------------------------------------------------------------- sharding, overhead, the report

def estimate_shape(shape: ModelShape, x: EstimateInput, convention: str = "realistic") -> MemoryReport:
    """The memory of one training process (one device) for `x` on a model of `shape`."""
    if convention == "article":
        return _article(shape, x)
    try:
        fp = footprint(shape, x)
    except Exception as e:  # an estimate must never stop a run: report it as unknown
        reason = str(e) if isinstance(e, UnknownMethod) else \
            f"the memory hook of finetuning_type {x.finetuning_type} failed ({type(e).__name__}: {e}); the estimate is skipped"
        return unknown_report(shape, reason)
    detail: dict = {}
    if fp.detail.get("method"):
        detail["method"] = fp.detail["method"]
    weights = weight_bytes(shape, x, detail, fp)
    grads = gradient_bytes(shape, x, detail, fp)
    opt = optimizer_bytes(shape, x, detail, fp)
    weights, grads, opt = shard(shape, x, weights, grads, opt)
    if x.reference_copies:
        ref = x.reference_copies * shape.total_params * BYTES[x.dtype]
        weights += ref
        detail["weights"] += f" + {x.reference_copies:g} frozen reference cop{'y' if x.reference_copies == 1 else 'ies'} of the base"
    acts = activation_bytes(shape, x, detail, fp)
    if x.quantization_bit:  # a quantized base is dequantized one linear at a time, in forward and in backward
        acts += max(a * b for a, b in shape.linears().values()) * BYTES[x.autocast or x.dtype]
        detail["activations"] += "; + one linear's dequantized weight"
    if x.autocast and x.dtype == "float32":  # autocast caches 16-bit copies of trainable base-dtype weights
        acts += fp.values(WEIGHT, COPY) * BYTES[x.autocast]
    whole = x.device == "cpu" and x.whole_process
    if whole:  # the malloc's retention of freed activations replaces the fixed slack
        overhead = process.RUNTIME + process.RETENTION[_malloc(x)] * acts + 0.02 * (weights + grads + opt)
        detail["overhead"] = (f"runtime {process.RUNTIME / GIB:.2f} GiB + {_malloc(x)} keeps "
                              f"{process.RETENTION[_malloc(x)]:.0%} of activations + 2% of the rest")
        if "bfloat16" in (x.dtype, x.autocast):
            overhead += process.ONEDNN_BF16
            detail["overhead"] += f" + oneDNN's bf16 primitives and scratch {process.ONEDNN_BF16 / GIB:.2f} GiB"
    else:  # CUDA: the context (outside torch's allocator). CPU: tokenizer, datasets and Trainer objects in the process.
        context = 0.5 * GIB if x.device == "cuda" else CPU_FRAMEWORK * GIB
        overhead = context + SLACK * acts + 0.02 * (weights + grads + opt)
        detail["overhead"] = ("CUDA context 0.5 GiB" if x.device == "cuda" else f"tokenizer, data and Trainer {CPU_FRAMEWORK} GiB") + \
            f" + allocator slack: {SLACK:.0%} of activations + 2% of the rest"
    for name, nbytes in x.extra.items():  # the stage's own buffers (value head, generation caches, ...)
        overhead += nbytes
        detail["overhead"] += f" + {name} {nbytes / GIB:.3f} GiB"
    overhead += sharded_overhead(shape, x, grads, detail)  # several processes: DDP buckets, FSDP/ZeRO-3 plain loss
    # Without accumulation, gradients are cleared after each step (set to None) and filled during backward as
    # activations are freed, so the two peaks do not add up; with accumulation they persist into the next forward.
    overlap = min(acts, grads) if x.grad_accum <= 1 else 0.0
    if overlap:
        detail["overlap"] = "gradients fill as backward frees activations: the total counts the larger of the two"
    report = MemoryReport(weights, grads, opt, acts, overhead, fp.trainable, shape.total_params, "realistic", detail, overlap)
    if whole:
        _add_process(report, shape, x)
    return report


def _malloc(x: EstimateInput) -> str:
    return x.malloc if x.malloc in process.RETENTION else "glibc"


def _add_process(report: MemoryReport, shape: ModelShape, x: EstimateInput) -> None:
    """The whole process on the CPU: its baseline and the load-time peak (no file pages stay mapped while training: a
    same-dtype load maps the weights themselves, counted as weights; a converting or quantizing load copies every tensor)."""
    file_dtype = x.checkpoint_dtype or x.dtype
    file_bytes = x.checkpoint_bytes if x.checkpoint_bytes is not None else shape.total_params * BYTES.get(file_dtype, 4)
    same = file_dtype == x.dtype
    quantized = bool(x.quantization_bit)
    report.process = process.BASELINE[_malloc(x)]
    largest = max(a * b for a, b in shape.linears().values()) * 4
    above, how = process.load_peak(report.weights, file_bytes, same, quantized, largest)
    report.load = report.process + above
    report.detail["process"] = f"{_malloc(x)}: interpreter, libraries and tokenizer {report.process / GIB:.2f} GiB"
    report.detail["load"] = f"{report.load / GIB:.2f} GiB while loading: {how}"


def unknown_report(shape: ModelShape, reason: str) -> MemoryReport:
    """A report for a method the estimator cannot count: every category 0, `known` False, the reason in detail."""
    return MemoryReport(0.0, 0.0, 0.0, 0.0, 0.0, 0, shape.total_params, "realistic", {"unknown": reason}, known=False)


def _article(shape: ModelShape, x: EstimateInput) -> MemoryReport:
    """The seed article's accounting; its Llama 3 8B table (b 8, s 512): 14.96 + 59.83 + 54.0 = 128.8 GiB."""
    p = shape.total_params
    weights = p * (0.5 if x.quantization_bit == 4 else 2)
    opt = p * (2 if "8bit" in x.optim else 8)
    per_layer = x.seq * x.batch * shape.hidden * (34 + 5 * shape.heads * x.seq / shape.hidden) * 2
    if x.gradient_checkpointing:
        keep = math.sqrt(shape.layers)  # sqrt(L) segments: one segment's layers live at a time
        acts = keep * per_layer + keep * 2 * x.seq * x.batch * shape.hidden
    else:
        acts = shape.layers * per_layer
    detail = {"weights": f"{p:,} x {'0.5' if x.quantization_bit == 4 else '2'} B", "optimizer": f"{p:,} x {2 if '8bit' in x.optim else 8} B",
              "activations": "Korthikanti: L x s x b x h x (34 + 5 a s / h) x 2 B" + (", sqrt(L) layers kept" if x.gradient_checkpointing else ""),
              "differs_from_realistic": "no gradients, no master weights, GPT-style activations (no GQA, no gated MLP, no logits)"}
    return MemoryReport(weights, 0.0, opt, acts, 0.0, p, p, "article", detail)


def describe(report: MemoryReport, available: float | None = None) -> str:
    """A short multi-line breakdown for the terminal."""
    if not report.known:
        return f"unknown: {report.detail.get('unknown', 'the method has no memory hook; the estimate is skipped')}"
    lines = [f"{'weights':<12}{report.weights / GIB:>9.2f} GiB  {report.detail.get('weights', '')}",
             f"{'gradients':<12}{report.gradients / GIB:>9.2f} GiB  {report.detail.get('gradients', '')}",
             f"{'optimizer':<12}{report.optimizer / GIB:>9.2f} GiB  {report.detail.get('optimizer', '')}",
             f"{'activations':<12}{report.activations / GIB:>9.2f} GiB  {report.detail.get('activations', '')}",
             f"{'overhead':<12}{report.overhead / GIB:>9.2f} GiB  {report.detail.get('overhead', '')}",
             *([f"{'overlap':<12}{-report.overlap / GIB:>9.2f} GiB  {report.detail.get('overlap', '')}"] if report.overlap else []),
             *([f"{'process':<12}{report.process / GIB:>9.2f} GiB  {report.detail.get('process', '')}"] if report.process else []),
             *([f"{'load peak':<12}{report.load / GIB:>9.2f} GiB  {report.detail.get('load', '')}"] if report.load else []),
             f"{'total':<12}{report.total / GIB:>9.2f} GiB" + (f"  (peak while {'loading' if report.phase == 'load' else 'training'})"
                                                               if report.load else "") + (f"  of {available / GIB:.1f} GiB available "
                                                               f"({'fits' if report.total <= available else 'does NOT fit'})"
                                                               if available else "")]
    return "\n".join(lines)
