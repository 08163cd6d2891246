"""Architecture facts: where the decoder layers are, parameter counts. torch is imported on first use: method
modules import these helpers when they register, and config validation must not pay for torch."""

from __future__ import annotations


def decoder_layers(model) -> tuple[str, torch.nn.ModuleList]:  # noqa: F821
    """The ModuleList of transformer blocks and its dotted name (e.g. `model.layers`)."""
    import torch

    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    best = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            if n is not None and len(module) == n:
                return name, module
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    return best


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def linear_module_names(model) -> list[str]:
    """Short names of the Linear layers inside the decoder layers (e.g. q_proj, down_proj)."""
    import torch

    prefix, _ = decoder_layers(model)
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith(prefix + "."):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)
