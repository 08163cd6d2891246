"""Full fine-tuning: every parameter trains."""

from tuneforge.methods.registry import register_method


def apply(model, cfg):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


register_method("full", None, apply)
