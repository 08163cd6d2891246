"""Exact tensor bytes of a training run by category: weights (quantized storage counted as stored),
gradients, optimizer states. A Trainer callback records their peak just after each optimizer step, when
gradients and states both exist."""

import torch
from transformers import TrainerCallback


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def tensor_bytes(model, optimizer=None) -> dict[str, int]:
    """{"weights", "trainable_weights", "gradients", "optimizer"} in bytes; tied tensors count once."""
    seen, weights, trainable, grads = set(), 0, 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        weights += _nbytes(p)
        if p.requires_grad:
            trainable += _nbytes(p)
        if p.grad is not None:
            grads += _nbytes(p.grad)
        quant_state = getattr(p, "quant_state", None)  # bitsandbytes 4-bit: absmax (+ nested constants)
        if quant_state is not None:
            weights += sum(_nbytes(t) for t in _quant_tensors(quant_state))
        scb = getattr(p, "SCB", None)  # bitsandbytes 8-bit: row scales
        if torch.is_tensor(scb):
            weights += _nbytes(scb)
    for b in model.buffers():
        if id(b) not in seen:
            seen.add(id(b))
            weights += _nbytes(b)
    opt = 0
    inner = getattr(optimizer, "optimizer", optimizer)
    if inner is not None:
        seen_t = set()
        for st in inner.state.values():
            for k, v in st.items():
                # tensors, and tensors held by state objects (GaLore's projector keeps its matrix as an attribute)
                inner_tensors = [v] if torch.is_tensor(v) else [a for a in vars(v).values() if torch.is_tensor(a)] \
                    if hasattr(v, "__dict__") else []
                for t in inner_tensors:
                    if id(t) not in seen_t and not str(k).startswith("qmap"):
                        seen_t.add(id(t))
                        opt += _nbytes(t)
    return {"weights": weights, "trainable_weights": trainable, "gradients": grads, "optimizer": opt}


def _quant_tensors(qs):
    out = [qs.absmax] if torch.is_tensor(getattr(qs, "absmax", None)) else []
    nested = getattr(qs, "state2", None)
    if nested is not None:
        out += [t for t in (getattr(nested, "absmax", None), getattr(nested, "code", None)) if torch.is_tensor(t)]
    return out


class TensorBytesProbe(TrainerCallback):
    """Peak of each category over the run (after each optimizer step, before gradients are cleared)."""

    def __init__(self):
        self.peak: dict[str, int] = {}

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kw):
        for k, v in tensor_bytes(model, optimizer).items():
            self.peak[k] = max(self.peak.get(k, 0), v)
