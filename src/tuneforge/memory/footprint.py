"""What a fine-tuning method trains and keeps, in the estimator's terms.

Each method's `memory(shape, x)` hook (methods/<name>.py, registered with the method) returns a `Footprint`; the
estimator (memory/estimate.py) turns it into bytes without knowing which method it is. The helpers here are shared
by the hooks: the model's parameters by transformers' names, the method's options as its config section, and the
AdamW state bytes of a set of tensors. No heavy imports: the hooks import this module when they run.
"""

import re
from dataclasses import dataclass, field, fields
from typing import Callable, Iterable

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
EIGHT_BIT_MIN = 4096  # bitsandbytes keeps the states of tensors with fewer values in 32 bits (min_8bit_size)

# what a trainable tensor is
WEIGHT = "weight"  # a weight of the base model that trains (base dtype)
ADAPTER = "adapter"  # a peft adapter tensor beside the frozen base, in fp32 whatever the base dtype (peft upcasts it)
COPY = "copy"  # a trainable copy of a base module beside its frozen original (peft modules_to_save), base dtype
KINDS = (WEIGHT, ADAPTER, COPY)

# transformers' names of the parameters outside the decoder layers (Llama-style causal LMs)
EMBED, NORM, HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"
LAYERS = "model.layers"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Tensors:
    """`count` trainable tensors of `numel` values each (e.g. one linear's LoRA A in every layer)."""

    numel: int
    count: int = 1
    kind: str = WEIGHT  # WEIGHT, ADAPTER or COPY
    embedding: bool = False  # an nn.Embedding: the Trainer keeps its AdamW states unquantized under 8-bit optimizers

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Tensors.kind must be one of {', '.join(KINDS)} (got {self.kind!r})")

    @property
    def values(self) -> int:
        return self.numel * self.count

    @property
    def added(self) -> bool:
        """Stored beside the base weights (adapters, copies), so it adds weight bytes."""
        return self.kind != WEIGHT


@dataclass(frozen=True)
class Footprint:
    """What a method trains and keeps, for the estimator (a method's `memory(shape, x)` returns one).

    tensors: every trainable tensor (the trainable count, the gradients and the AdamW states come from them; added
        ones also add weight bytes).
    trained_layers: decoder layers in the backward graph that train weights there (they keep their linears' inputs).
    frozen_layers: decoder layers in the backward graph with nothing to train (gradients only pass through: they keep
        less). The backward graph is the top `trained_layers + frozen_layers` layers (the loss is at the top).
    extra_tokens: tokens the method adds to every example (prompt tuning's virtual tokens).
    head_gradient: the LM head's weight trains, so the fused loss builds its fp32 gradient during forward.
    optimizer_bytes / gradient_bytes: replace the generic AdamW states / gradients (GaLore's projected states,
        layerwise updates); None: counted from `tensors`.
    detail: text by report category ("method", and "optimizer"/"gradients" for overridden ones) for the report.
    """

    tensors: tuple[Tensors, ...] = ()
    trained_layers: int = 0
    frozen_layers: int = 0
    extra_tokens: int = 0
    head_gradient: bool = False
    optimizer_bytes: float | None = None
    gradient_bytes: float | None = None
    detail: dict = field(default_factory=dict)

    @property
    def trainable(self) -> int:
        """Trainable parameters (adapters and copies included)."""
        return sum(t.values for t in self.tensors)

    def values(self, *kinds: str) -> int:
        """Trainable values of these kinds (all kinds when none is given)."""
        return sum(t.values for t in self.tensors if not kinds or t.kind in kinds)


# ---------------------------------------------------------------- options

def section(cls, x):
    """The method's options as its config section object: `x.options` over the section's defaults (keys the section
    does not have are ignored). None for a method without a section."""
    if cls is None:
        return None
    names = {f.name for f in fields(cls) if f.init}
    return cls(**{k: v for k, v in (x.options or {}).items() if k in names})


# ---------------------------------------------------------------- the model's parameters

def parameter_table(shape) -> tuple[dict[str, int], dict[str, int]]:
    """(outer, layer): numel by parameter name as transformers names them in a Llama-style causal LM. `outer`: the
    parameters outside the decoder layers by full name (no lm_head when it is tied to the embeddings); `layer`: one
    decoder layer's, by name inside the layer (`self_attn.q_proj.weight`, `input_layernorm.weight`, ...)."""
    outer = {EMBED: shape.embedding_params, NORM: shape.hidden}
    if not shape.tied:
        outer[HEAD] = shape.head_params
    layer = {}
    for name, (a, b) in shape.linears().items():
        group = "self_attn" if name in ATTENTION else "mlp"
        layer[f"{group}.{name}.weight"] = a * b
        if shape.qkv_bias and name in ATTENTION[:3]:
            layer[f"{group}.{name}.bias"] = b
    layer["input_layernorm.weight"] = shape.hidden
    layer["post_attention_layernorm.weight"] = shape.hidden
    return outer, layer


def tensors(table: dict[str, int], names: Iterable[str], count: int = 1, kind: str = WEIGHT) -> tuple[Tensors, ...]:
    """Tensors for these parameter names of a `parameter_table` half, each `count` times (layers)."""
    if count <= 0:
        return ()
    return tuple(Tensors(table[n], count, kind, embedding=n == EMBED) for n in names)


def all_tensors(shape) -> tuple[Tensors, ...]:
    """Every parameter of the model as trained base weights (full fine-tuning)."""
    outer, layer = parameter_table(shape)
    return tensors(layer, layer, shape.layers) + tensors(outer, outer)


def linear_modules(shape) -> list[tuple[str, int, int]]:
    """(full module name, in_features, out_features) of every Linear: each decoder layer's, then an untied lm_head."""
    out = []
    for i in range(shape.layers):
        for name, (a, b) in shape.linears().items():
            out.append((f"{LAYERS}.{i}.{'self_attn' if name in ATTENTION else 'mlp'}.{name}", a, b))
    if not shape.tied:
        out.append(("lm_head", shape.hidden, shape.vocab))
    return out


def matched_parameters(shape, matches: Callable[[str], bool]) -> dict[str, int]:
    """numel by full parameter name of the parameters under every module whose full name `matches` (e.g. peft's
    modules_to_save). Module names as transformers has them (`model.embed_tokens`, `lm_head`, `model.layers.3.mlp`);
    lm_head is a module of tied models too (sharing the embedding's weight)."""
    outer, layer = parameter_table(shape)
    if shape.tied:
        outer = {**outer, HEAD: shape.embedding_params}

    def hit(param: str) -> bool:
        parts = param.split(".")[:-1]
        return any(matches(".".join(parts[:k])) for k in range(1, len(parts) + 1))

    out = {name: n for name, n in outer.items() if hit(name)}
    for i in range(shape.layers):
        out.update({f"{LAYERS}.{i}.{name}": n for name, n in layer.items() if hit(f"{LAYERS}.{i}.{name}")})
    return out


def optim_target_matches(targets, name: str) -> bool:
    """transformers' rule for `optim_target_modules` (GaLore): a name in the list, a substring, or a regex fullmatch."""
    if isinstance(targets, str):
        targets = [targets]
    if name in targets or any(t in name for t in targets):
        return True
    for t in targets:
        try:
            if re.fullmatch(t, name):
                return True
        except re.error:
            pass
    return False


# ---------------------------------------------------------------- bytes

def value_bytes(t: Tensors, x) -> int:
    """Bytes of one value of a trainable tensor (and of its gradient): adapters in fp32, the rest in the base dtype."""
    return 4 if t.kind == ADAPTER else BYTES[x.dtype]


def adamw_bytes_per_value(t: Tensors, x) -> float:
    """AdamW state bytes per value: two uint8 states + an fp32 absmax per 256-value block with an 8-bit optimizer
    (tensors of >= 4096 values that are not embeddings); else two states in the tensor's dtype."""
    if "8bit" in x.optim and t.numel >= EIGHT_BIT_MIN and not t.embedding:
        return 2 + 2 * 4 / 256
    return 2 * value_bytes(t, x)


def adamw_bytes(ts: Iterable[Tensors], x) -> float:
    """AdamW state bytes of these tensors (8-bit where bitsandbytes quantizes them)."""
    return sum(t.values * adamw_bytes_per_value(t, x) for t in ts)
