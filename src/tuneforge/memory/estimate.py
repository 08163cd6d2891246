"""The analytic memory estimator: weights, gradients, optimizer states, activations (with the logits and loss
buffers) and overhead for every method, from a model's config.json alone.

Two conventions:
- `realistic` (default): what PyTorch really keeps: the real architecture (GQA, gated MLP widths, tied
  embeddings), gradients, fp32 master weights where they exist, the tensors autograd saves per layer,
  vocabulary-sized fp32 buffers around the loss, framework and allocator overhead. Three constants
  (LOSS_BUFFERS, CPU_FRAMEWORK, the CPU 4-bit dequantized copies) were fitted to measured peaks.
- `article`: the seed article's accounting (bf16 weights, fp32 AdamW states, no gradients, Korthikanti
  activations s*b*h*(34 + 5*a*s/h) per layer at 2 bytes per unit; checkpointing keeps sqrt(L) layers).
"""

import math
from dataclasses import dataclass, field

from tuneforge.memory.shapes import ModelShape
from tuneforge.models.heads import CHUNK_BYTES, PLAIN_HEAD_MODEL_TYPES
from tuneforge.train import checkpointing

GIB = 2**30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SHARDINGS = ("none", "ddp", "zero1", "zero2", "zero3", "fsdp")
LOSS_BUFFERS = 2  # vocabulary-sized fp32 buffers alive at the loss peak (fitted: benchmarks/estimator_accuracy.py)
CPU_FRAMEWORK = 0.15  # GiB: libraries loaded on first use, tokenizer, data, Trainer (fitted likewise)
SLACK = 0.05  # allocator slack on activations
METHODS = ("full", "freeze", "lora", "galore", "lisa", "prefix", "prompt")


@dataclass
class EstimateInput:
    """Everything the estimate depends on; built from a RunConfig (`from_config`) or flags."""

    finetuning_type: str = "lora"
    batch: int = 4
    seq: int = 512
    dtype: str = "float32"  # weight dtype of the base
    autocast: str | None = None  # "bfloat16"/"float16" when training with mixed precision over fp32 weights
    device: str = "cpu"  # "cpu" or "cuda"
    lora_rank: int = 8
    lora_target: tuple[str, ...] = ("all",)
    use_dora: bool = False
    quantization_bit: int | None = None
    double_quantization: bool = True
    optim: str = "adamw_torch"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1  # with checkpointing: layers 0, n, 2n, ... are recomputed (transformers' every_n_layers)
    attn_implementation: str = "sdpa"
    freeze_trainable_layers: int = 2
    galore_rank: int = 16
    galore_layerwise: bool = False
    lisa_layers: int = 2
    lisa_train_embeddings: bool = True
    num_virtual_tokens: int = 20
    grad_accum: int = 1
    world_size: int = 1
    sharding: str = "none"
    supervised_logits_only: bool = True  # the trainer's fused, chunked head + loss where the architecture allows


@dataclass
class MemoryReport:
    """Bytes by category (GiB in `to_dict`), with the arithmetic behind each in `detail`."""

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

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead - self.overlap

    def to_dict(self) -> dict:
        out = {f"{k}_gib": round(getattr(self, k) / GIB, 3) for k in ("weights", "gradients", "optimizer", "activations", "overhead")}
        out["total_gib"] = round(self.total / GIB, 3)
        out["overlap_gib"] = round(self.overlap / GIB, 3)
        out.update(trainable_params=self.trainable_params, total_params=self.total_params, convention=self.convention,
                   detail=self.detail)
        return out


# ---------------------------------------------------------------- parameters

def _lora_targets(shape: ModelShape, targets) -> dict[str, tuple[int, int]]:
    lin = shape.linears()
    return lin if list(targets) == ["all"] else {k: v for k, v in lin.items() if k in targets}


def trainable_params(shape: ModelShape, x: EstimateInput) -> int:
    """How many parameters the method trains (adapters included)."""
    m = x.finetuning_type
    if m in ("full", "galore"):
        return shape.total_params
    if m == "freeze":
        return min(abs(x.freeze_trainable_layers), shape.layers) * shape.layer_params
    if m == "lora":
        per_layer = sum(x.lora_rank * (a + b) + (b if x.use_dora else 0) for a, b in _lora_targets(shape, x.lora_target).values())
        return shape.layers * per_layer
    if m == "lisa":
        emb = shape.embedding_params + shape.head_params + shape.hidden if x.lisa_train_embeddings else 0
        return emb + min(x.lisa_layers, shape.layers) * shape.layer_params
    if m == "prefix":
        return x.num_virtual_tokens * shape.layers * 2 * shape.kv_dim
    if m == "prompt":
        return x.num_virtual_tokens * shape.hidden
    raise ValueError(f"finetuning_type `{m}` is not one of {', '.join(METHODS)}")


def _quantized_bytes_per_param(x: EstimateInput) -> float:
    """4-bit: half a byte + one fp32 absmax per 64 values (DQ: one byte per 64, plus fp32 per 256 blocks);
    8-bit: one byte + an fp32 scale per row (counted as ~0)."""
    if x.quantization_bit == 4:
        return 0.5 + (1 / 64 + 4 / (64 * 256) if x.double_quantization else 4 / 64)
    return 1.0


def weight_bytes(shape: ModelShape, x: EstimateInput, detail: dict) -> float:
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
    if x.finetuning_type in ("lora", "prefix", "prompt"):  # adapters live in fp32 (peft upcasts them)
        adapters = trainable_params(shape, x) * 4
        detail["weights"] += f" + {trainable_params(shape, x):,} adapter params x 4 B"
        base += adapters
    return base


# ---------------------------------------------------------------- gradients and optimizer states

def _trainable_dtype_bytes(x: EstimateInput) -> int:
    return 4 if x.finetuning_type in ("lora", "prefix", "prompt") else BYTES[x.dtype]


def gradient_bytes(shape: ModelShape, x: EstimateInput, detail: dict) -> float:
    n = trainable_params(shape, x)
    b = _trainable_dtype_bytes(x)
    if x.finetuning_type == "galore" and x.galore_layerwise:
        n = shape.layer_params + shape.embedding_params  # each layer is stepped and freed during backward
        detail["gradients"] = f"layerwise: ~one layer + embeddings x {b} B"
        return n * b
    detail["gradients"] = f"{n:,} trainable x {b} B"
    return n * b


def _adam_bytes_per_param(x: EstimateInput, numel: int) -> float:
    eight_bit = "8bit" in x.optim and numel >= 4096  # bitsandbytes keeps small tensors in 32 bits
    if eight_bit:
        return 2 + 2 * 4 / 256  # two uint8 states + fp32 absmax per 256-value block
    return 2 * _trainable_dtype_bytes(x) if x.finetuning_type not in ("lora", "prefix", "prompt") else 8


def optimizer_bytes(shape: ModelShape, x: EstimateInput, detail: dict) -> float:
    m = x.finetuning_type
    if m == "galore":
        r = x.galore_rank
        # galore-torch projects an m x n gradient to max(m,n) x r (states 2 x that) with an r x min(m,n) projector
        per_layer = sum(2 * r * max(a, b) * 4 + r * min(a, b) * 4 for a, b in shape.linears().values())
        rest = (shape.layers * (shape.layer_params - shape.layer_linear_params) + shape.embedding_params + shape.head_params
                + shape.hidden)
        total = shape.layers * per_layer + rest * 2 * BYTES[x.dtype]
        detail["optimizer"] = f"GaLore rank {r}: projected states 2 x r x max(m,n) + projector r x min(m,n) per matrix; AdamW on the rest"
        return total
    n = trainable_params(shape, x)
    if m == "lora":
        tensors = [x.lora_rank * a for a, b in _lora_targets(shape, x.lora_target).values()] + \
                  [x.lora_rank * b for a, b in _lora_targets(shape, x.lora_target).values()]
        total = shape.layers * sum(t * _adam_bytes_per_param(x, t) for t in tensors)
    elif m in ("full", "freeze", "lisa"):
        with_emb = m == "full" or (m == "lisa" and x.lisa_train_embeddings)
        layers = {"full": shape.layers, "freeze": min(abs(x.freeze_trainable_layers), shape.layers), "lisa": x.lisa_layers}[m]
        layer_total = sum(a * b * _adam_bytes_per_param(x, a * b) for a, b in shape.linears().values())
        small = shape.layer_params - shape.layer_linear_params
        total = layers * (layer_total + small * _adam_bytes_per_param(x, 1))
        if with_emb:  # the Trainer keeps nn.Embedding states in 32 bits even with 8-bit optimizers
            total += shape.embedding_params * 2 * _trainable_dtype_bytes(x)
            total += shape.head_params * _adam_bytes_per_param(x, shape.head_params)
        total += (shape.hidden * _adam_bytes_per_param(x, 1) if m != "freeze" else 0)
    else:
        total = n * _adam_bytes_per_param(x, 1)
    master = _master_weights(x)
    if master:
        total += n * 4
    detail["optimizer"] = (f"AdamW{' 8-bit' if '8bit' in x.optim else ''} states for {n:,} trainable params"
                           + (" + fp32 master weights" if master else "") + (" (paged: spills to host memory under pressure)"
                                                                             if "paged" in x.optim else ""))
    return total


def _master_weights(x: EstimateInput) -> bool:
    """ZeRO/FSDP mixed precision keeps an fp32 master copy of 16-bit trainable weights."""
    return x.sharding in ("zero1", "zero2", "zero3", "fsdp") and x.dtype != "float32" and x.finetuning_type not in ("lora", "prefix", "prompt")


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
        units += shape.heads * x.seq
    return units * d


def frozen_layer_saving_per_token(shape: ModelShape, x: EstimateInput) -> float:
    """A layer in the backward graph without trainable weights keeps no linear inputs: the two normalised
    inputs, the o_proj input and the down_proj input (2h + q_dim + I) are not saved."""
    d = BYTES[x.autocast] if x.autocast else BYTES[x.dtype]
    return (2 * shape.hidden + shape.q_dim + shape.intermediate) * d


def activation_bytes(shape: ModelShape, x: EstimateInput, detail: dict) -> float:
    tokens = x.batch * x.seq + (x.batch * x.num_virtual_tokens if x.finetuning_type in ("prompt",) else 0)
    per_layer = layer_activation_bytes_per_token(shape, x) * tokens
    frozen_per_layer = per_layer - frozen_layer_saving_per_token(shape, x) * tokens
    m = x.finetuning_type
    if m == "freeze":  # layers below the trained ones are not in the backward graph at all
        trained, frozen = min(abs(x.freeze_trainable_layers), shape.layers), 0
    elif m == "lisa":  # gradients flow through every layer (to the embeddings, or worst case from the lowest active one)
        trained = min(x.lisa_layers, shape.layers)
        frozen = shape.layers - trained
    elif m in ("prefix", "prompt"):
        trained, frozen = 0, shape.layers
    else:  # full, galore, lora (LoRA keeps the inputs of the adapted linears)
        trained, frozen = shape.layers, 0
    d = BYTES[x.autocast] if x.autocast else BYTES[x.dtype]
    graph_layers = trained + frozen
    if x.gradient_checkpointing:
        # checkpointed layers keep only their input, plus one layer's activations while it is recomputed; the others
        # keep everything (worst case for LISA: the trained layers are among the kept ones)
        first = shape.layers - graph_layers  # freeze: only the top layers are in the backward graph
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
        head_grad = shape.vocab * shape.hidden * 4 if m in ("full", "galore") or (m == "lisa" and x.lisa_train_embeddings) else 0
        logits = 2 * chunk + head_grad
        detail["activations"] = (f"{how}; fused chunked loss: 2 x {chunk / 2**20:.0f} MiB logits chunk"
                                 + (f" + head gradient {head_grad / GIB:.3f} GiB" if head_grad else ""))
    else:
        logits = LOSS_BUFFERS * x.batch * x.seq * shape.vocab * 4
        detail["activations"] = f"{how}; logits/loss buffers {LOSS_BUFFERS} x b x s x vocab x 4 B = {logits / GIB:.3f} GiB"
    detail["logits_gib"] = round(logits / GIB, 3)
    return layers + logits + embeddings


# ---------------------------------------------------------------- sharding, overhead, the report

def _shard(x: EstimateInput, weights: float, grads: float, opt: float) -> tuple[float, float, float]:
    n = max(1, x.world_size)
    s = x.sharding
    if s in ("zero1",):
        return weights, grads, opt / n
    if s in ("zero2",):
        return weights, grads / n, opt / n
    if s in ("zero3", "fsdp"):
        return weights / n, grads / n, opt / n
    return weights, grads, opt


def estimate_shape(shape: ModelShape, x: EstimateInput, convention: str = "realistic") -> MemoryReport:
    """The memory of one training process (one device) for `x` on a model of `shape`."""
    if convention == "article":
        return _article(shape, x)
    detail: dict = {}
    weights = weight_bytes(shape, x, detail)
    grads = gradient_bytes(shape, x, detail)
    opt = optimizer_bytes(shape, x, detail)
    weights, grads, opt = _shard(x, weights, grads, opt)
    if x.sharding in ("zero3", "fsdp") and x.world_size > 1:
        weights += 2 * shape.layer_params * BYTES[x.dtype]  # layers gathered for compute
    acts = activation_bytes(shape, x, detail)
    if x.quantization_bit and x.device == "cpu":  # measured: bitsandbytes' CPU path keeps dequantized weights
        acts += shape.layers * shape.layer_linear_params * 4
        detail["activations"] += "; + dequantized fp32 copies of the quantized weights (bitsandbytes on the CPU)"
    if x.autocast and x.dtype == "float32" and x.finetuning_type not in ("lora", "prefix", "prompt"):
        acts += trainable_params(shape, x) * BYTES[x.autocast]  # autocast caches 16-bit copies of trainable weights
    # CUDA: the context (outside torch's allocator). CPU: tokenizer, datasets and Trainer objects in the process.
    context = 0.5 * GIB if x.device == "cuda" else CPU_FRAMEWORK * GIB
    overhead = context + SLACK * acts + 0.02 * (weights + grads + opt)
    detail["overhead"] = ("CUDA context 0.5 GiB" if x.device == "cuda" else f"tokenizer, data and Trainer {CPU_FRAMEWORK} GiB") + \
        f" + allocator slack: {SLACK:.0%} of activations + 2% of the rest"
    # Without accumulation, gradients are cleared after each step (set to None) and filled during backward as
    # activations are freed, so the two peaks do not add up; with accumulation they persist into the next forward.
    overlap = min(acts, grads) if x.grad_accum <= 1 else 0.0
    if overlap:
        detail["overlap"] = "gradients fill as backward frees activations: the total counts the larger of the two"
    return MemoryReport(weights, grads, opt, acts, overhead, trainable_params(shape, x), shape.total_params, "realistic", detail,
                        overlap)


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
    lines = [f"{'weights':<12}{report.weights / GIB:>9.2f} GiB  {report.detail.get('weights', '')}",
             f"{'gradients':<12}{report.gradients / GIB:>9.2f} GiB  {report.detail.get('gradients', '')}",
             f"{'optimizer':<12}{report.optimizer / GIB:>9.2f} GiB  {report.detail.get('optimizer', '')}",
             f"{'activations':<12}{report.activations / GIB:>9.2f} GiB  {report.detail.get('activations', '')}",
             f"{'overhead':<12}{report.overhead / GIB:>9.2f} GiB  {report.detail.get('overhead', '')}",
             *([f"{'overlap':<12}{-report.overlap / GIB:>9.2f} GiB  {report.detail.get('overlap', '')}"] if report.overlap else []),
             f"{'total':<12}{report.total / GIB:>9.2f} GiB" + (f"  of {available / GIB:.1f} GiB available "
                                                               f"({'fits' if report.total <= available else 'does NOT fit'})"
                                                               if available else "")]
    return "\n".join(lines)
