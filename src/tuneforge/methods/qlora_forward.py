"""The frozen matmul of a LoRA layer on a bitsandbytes-quantized base (QLoRA), holding only the quantized bytes.

The forward dequantizes the layer's weight into a temporary, multiplies, and drops it; the backward dequantizes it
again for the input gradient. Between the two the autograd graph holds nothing weight-sized: the quantized weight
stays a parameter of the module and the function keeps the module itself, as `lora_forward._FrozenLinearAdd`
keeps a frozen fp32 weight. So a quantized base costs its quantized bytes plus one layer's dequantized weight at a
time, whatever the device. bitsandbytes' own CPU paths compute the same values (4-bit: dequantize then `linear`;
8-bit training: `CB * SCB / 127` then `linear`), but its 8-bit function keeps its input on a context that lingers
until Python's cycle collector runs, and peft adds a clone and two full-width adds around it.

Taken only while training (bitsandbytes' inference paths differ: packed AVX-512 4-bit weights, int8 matmuls with
outlier columns), for 4-bit `Linear4bit` (NF4/FP4, with or without double quantization) and 8-bit `Linear8bitLt`
bases with int8 weights, when the input's dtype is the one the layer computes in.
"""

import torch


def frozen_weight(base: torch.nn.Module, x: torch.Tensor):
    """A no-argument function returning `base`'s dequantized weight (out x in, in x's dtype), or None when this
    quantized layer must keep bitsandbytes' own forward."""
    if not (base.training and torch.is_grad_enabled()) or base.weight.requires_grad:
        return None
    if base.bias is not None and base.bias.dtype != x.dtype:
        return None
    kind, dtype = type(base).__name__, x.dtype  # the closures keep the dtype, not the input
    if kind in ("Linear4bit", "LinearNF4", "LinearFP4"):
        qs = getattr(base.weight, "quant_state", None)
        if qs is None or getattr(qs, "packing_format_for_cpu", False) or base.compute_dtype not in (None, dtype):
            return None
        return lambda: dequantize_4bit(base.weight, qs, dtype)
    if kind == "Linear8bitLt":
        if base.state.has_fp16_weights or base.weight.dtype != torch.int8:
            return None
        return lambda: dequantize_8bit(base, dtype)
    return None


def dequantize_4bit(weight: torch.Tensor, qs, dtype: torch.dtype) -> torch.Tensor:
    """The (out x in) weight of a 4-bit parameter in `dtype`, computed as bitsandbytes' own matmul does."""
    from bitsandbytes import functional as F

    absmax = qs.absmax
    if qs.nested:
        absmax = F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
    return torch.ops.bitsandbytes.dequantize_4bit.default(weight.view(-1, 1), absmax.float(), qs.blocksize, qs.quant_type,
                                                          qs.shape, dtype)


def dequantize_8bit(base: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The (out x in) weight of an 8-bit layer: int8 rows times their absmax / 127 (bitsandbytes' formula)."""
    scb = base.state.SCB if base.state.SCB is not None else base.weight.SCB
    return base.weight.data.to(dtype).mul_(scb.unsqueeze(1).mul(1.0 / 127.0))


class DequantLinearAdd(torch.autograd.Function):
    """`add + x @ W^T` where `weight()` dequantizes a frozen W on demand: in forward, and again in backward."""

    @staticmethod
    def forward(ctx, add: torch.Tensor, x: torch.Tensor, weight) -> torch.Tensor:
        ctx.weight = weight  # a closure over the module: no tensor is kept
        return torch.addmm(add, x, weight().t())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, grad @ ctx.weight() if ctx.needs_input_grad[1] else None, None
