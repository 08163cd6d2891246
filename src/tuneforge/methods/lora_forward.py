"""A leaner forward for peft's plain LoRA linear: the frozen matmul, the adapter and the sum in one addmm.

peft computes `base(x) + lora_B(lora_A(x)) * scaling`: a full-width multiply and add after the small matmul, and
another full-width multiply in backward. Here the rank-r activations are scaled instead, and the frozen matmul adds
the adapter's output in its epilogue: `addmm(B (s A x), x, W^T)`. On SmolLM2 on the CPU the removed multiplies and
adds were ~6% of a LoRA step.

The frozen matmul is a small autograd function that keeps W on its context instead of saving it for backward, so it
saves nothing. Under non-reentrant activation checkpointing the recompute stops after the last op that saves
something; in a decoder layer that is now the down projection's adapter, so the recompute skips the down
projection's frozen matmul (~25% of a layer's FLOPs; LoRA with checkpointing ran ~4% faster, without it the same).

Only the vanilla single-adapter case takes this path (no dropout, no DoRA or other variant, no LoRA bias, not
merged, a frozen `nn.Linear` base, no autocast, activations in the base's dtype and adapters either in it too or in
fp32 over a bf16/fp16 base); every other call goes to peft's own forward. Over a bf16 base the rank-r part runs in
bf16 from bf16 casts of the fp32 adapters: peft would cast every activation to fp32 and run the adapter in fp32. peft's
LoRA layers on bitsandbytes 4-bit and 8-bit bases take it too while training, with a frozen matmul that
dequantizes the weight in forward and again in backward (`qlora_forward`).
"""

import types

import torch
from torch import nn
from torch.nn import functional as F

from tuneforge.distributed import is_sharded, log_sharded_fallback
from tuneforge.methods import qlora_forward


class _FrozenLinearAdd(torch.autograd.Function):
    """`add + x @ W^T` for a frozen W, saving nothing (W is a parameter, held on the context)."""

    @staticmethod
    def forward(ctx, add: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.weight = weight
        return torch.addmm(add, x, weight.t())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, grad @ ctx.weight if ctx.needs_input_grad[1] else None, None


def _fast_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    plain = type(self).forward
    if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
        return plain(self, x, *args, **kwargs)
    name = self.active_adapters[0]
    base = self.base_layer
    if (name not in self.lora_A or name in self.lora_variant or not isinstance(self.lora_dropout[name], nn.Identity)
            or self.lora_B[name].bias is not None or torch.is_autocast_enabled(x.device.type)
            or type(base) is not nn.Linear or base.weight.requires_grad or self.fan_in_fan_out):
        return plain(self, x, *args, **kwargs)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    if not (x.dtype == base.weight.dtype and (a.dtype == b.dtype == x.dtype or _low_base(x.dtype, a, b))):
        return plain(self, x, *args, **kwargs)
    if is_sharded(base.weight) or is_sharded(a) or is_sharded(b):  # read outside their modules' forward: not whole
        log_sharded_fallback("the fused LoRA forward")
        return plain(self, x, *args, **kwargs)
    x2 = x.reshape(-1, x.shape[-1])
    out = _FrozenLinearAdd.apply(_adapter_output(self, name, x2), x2, base.weight)
    return out.view(*x.shape[:-1], out.shape[-1])


def _low_base(dtype: torch.dtype, a: torch.Tensor, b: torch.Tensor) -> bool:
    """A bf16/fp16 frozen base with fp32 adapters (peft keeps adapters fp32 over a low-precision base)."""
    return dtype in (torch.bfloat16, torch.float16) and a.dtype == b.dtype == torch.float32


def _adapter_output(self, name: str, x2: torch.Tensor) -> torch.Tensor:
    """`B (s A x)` plus the base's bias: what the frozen matmul adds its product to.

    Over a bf16/fp16 base the fp32 adapter weights are cast to the activations' dtype (r x width, cheap; their
    gradients come back through the cast in fp32) instead of casting every activation to fp32 as peft does."""
    a, b, bias = self.lora_A[name].weight, self.lora_B[name].weight, self.base_layer.bias
    a, b = a.to(x2.dtype), b.to(x2.dtype)
    h = F.linear(x2, a) * self.scaling[name]  # rank-r wide: scaling here is cheap
    return torch.mm(h, b.t()) if bias is None else torch.addmm(bias, h, b.t())


def _quantized_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The fused forward over a bitsandbytes 4/8-bit base: the frozen matmul dequantizes on demand."""
    plain = type(self).forward
    if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
        return plain(self, x, *args, **kwargs)
    name = self.active_adapters[0]
    if (name not in self.lora_A or name in self.lora_variant or not isinstance(self.lora_dropout[name], nn.Identity)
            or self.lora_B[name].bias is not None or torch.is_autocast_enabled(x.device.type)):
        return plain(self, x, *args, **kwargs)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    weight = qlora_forward.frozen_weight(self.base_layer, x) if x.dtype == a.dtype == b.dtype else None
    if weight is None:
        return plain(self, x, *args, **kwargs)
    x2 = x.reshape(-1, x.shape[-1])
    out = qlora_forward.DequantLinearAdd.apply(_adapter_output(self, name, x2), x2, weight)
    return out.view(*x.shape[:-1], out.shape[-1])


def _quantized_classes() -> tuple:
    """peft's LoRA layers over bitsandbytes bases (none when bitsandbytes is not installed)."""
    try:
        from peft.tuners.lora import bnb
    except ImportError:
        return ()
    return tuple(getattr(bnb, n) for n in ("Linear4bit", "Linear8bitLt") if hasattr(bnb, n))


def fuse(model: nn.Module) -> int:
    """Give every plain peft LoRA Linear in `model`, and every one over a bitsandbytes base, the fused forward;
    returns how many modules it changed."""
    from peft.tuners.lora.layer import Linear

    quantized = _quantized_classes()
    count = 0
    for module in model.modules():
        if type(module) is Linear:  # other subclasses (torchao, ...) keep their own forward
            module.forward = types.MethodType(_fast_forward, module)
        elif type(module) in quantized:
            module.forward = types.MethodType(_quantized_forward, module)
        else:
            continue
        count += 1
    return count


def unfuse(model: nn.Module) -> None:
    """Back to peft's forward everywhere (the instance attribute set by `fuse` is removed)."""
    for module in model.modules():
        if "forward" in vars(module) and getattr(module.forward, "__func__", None) in (_fast_forward, _quantized_forward):
            del module.forward
