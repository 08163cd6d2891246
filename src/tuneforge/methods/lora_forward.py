"""A leaner forward for peft's plain LoRA linear: the adapter's scale and sum in one addmm.

peft computes `base(x) + lora_B(lora_A(x)) * scaling`: a full-width multiply and add after the small
matmul, and another full-width multiply in backward. `addmm(base(x), lora_A(x), B^T, alpha=scaling)`
does the same in the matmul's epilogue; its backward scales only the rank-r gradients. Same result up
to fp32 rounding; on SmolLM2 on the CPU these multiplies and adds were ~6% of a LoRA step.

Only the vanilla single-adapter case takes this path (no dropout, no DoRA or other variant, no LoRA bias,
not merged, one dtype, no autocast); every other call goes to peft's own forward.
"""

import types

import torch
from torch import nn
from torch.nn import functional as F


def _fast_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    plain = type(self).forward
    if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
        return plain(self, x, *args, **kwargs)
    name = self.active_adapters[0]
    if (name not in self.lora_A or name in self.lora_variant or not isinstance(self.lora_dropout[name], nn.Identity)
            or self.lora_B[name].bias is not None or torch.is_autocast_enabled(x.device.type)):
        return plain(self, x, *args, **kwargs)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    result = self.base_layer(x)
    if not (x.dtype == a.dtype == b.dtype == result.dtype):
        return plain(self, x, *args, **kwargs)
    h = F.linear(x, a)
    out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), b.t(), alpha=self.scaling[name])
    return out.view(result.shape)


def fuse(model: nn.Module) -> int:
    """Give every plain peft LoRA Linear in `model` the fused forward; returns how many modules it changed."""
    from peft.tuners.lora.layer import Linear

    count = 0
    for module in model.modules():
        if type(module) is Linear:  # subclasses (bnb, torchao, ...) keep their own forward
            module.forward = types.MethodType(_fast_forward, module)
            count += 1
    return count


def unfuse(model: nn.Module) -> None:
    """Back to peft's forward everywhere (the instance attribute set by `fuse` is removed)."""
    for module in model.modules():
        if "forward" in vars(module) and getattr(module.forward, "__func__", None) is _fast_forward:
            del module.forward
