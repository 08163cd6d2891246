"""Full fine-tuning: every parameter trains."""

from tuneforge.methods.registry import register_method


def apply(model, cfg):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def memory(shape, x):
    """Every parameter trains: all layers keep their activations, the LM head's gradient is built in the loss."""
    from tuneforge.memory.footprint import Footprint, all_tensors

    return Footprint(all_tensors(shape), trained_layers=shape.layers, head_gradient=True)


register_method("full", None, apply, memory=memory,
                fit=(("full", {}, 0.65), ("full + 8-bit AdamW", {"optim": "adamw_bnb_8bit"}, 0.34)),
                help="Every parameter trains.")
