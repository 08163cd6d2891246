"""Freeze tuning: only some decoder layers (last N by default) and named extra modules train."""

from dataclasses import dataclass

from tuneforge import TuneforgeError
from tuneforge.config import field
from tuneforge.methods.registry import register_method
from tuneforge.models.arch import decoder_layers


@dataclass
class FreezeSection:
    """Options of finetuning_type: freeze."""

    freeze_trainable_layers: int = field(2, help="Train the last N decoder layers (a negative N: the first N).")
    freeze_trainable_modules: list[str] = field(["all"], help="Inside those layers, train these submodules (e.g. mlp,self_attn) or all.")
    freeze_extra_modules: list[str] = field([], help="Modules outside the decoder layers that also train (e.g. embed_tokens,norm).")

    def validate(self) -> list[str]:
        if self.freeze_trainable_layers == 0:
            return ["freeze_trainable_layers must not be 0; use a positive N for the last N layers or a negative N for the first N"]
        return []

    def validate_model(self, shape) -> list[str]:
        if abs(self.freeze_trainable_layers) > shape.layers:
            return [f"freeze_trainable_layers {self.freeze_trainable_layers} is more layers than the model's {shape.layers}; "
                    f"use 1 to {shape.layers} (or -1 to -{shape.layers} for the first ones), or finetuning_type: full"]
        return []


def _matches(path: list[str], pattern: str) -> bool:
    want = pattern.split(".")
    return any(path[i:i + len(want)] == want for i in range(len(path) - len(want) + 1))


def trainable_layer_ids(num_layers: int, n: int) -> list[int]:
    """Indices of the trained layers: the last n, or the first -n."""
    n_abs = min(abs(n), num_layers)
    return list(range(num_layers - n_abs, num_layers)) if n > 0 else list(range(n_abs))


def apply(model, cfg):
    sec: FreezeSection = cfg.method_section("freeze")
    prefix, layers = decoder_layers(model)
    layer_ids = set(trainable_layer_ids(len(layers), sec.freeze_trainable_layers))
    modules = [m for m in sec.freeze_trainable_modules if m != "all"]
    used = {m: False for m in modules + list(sec.freeze_extra_modules)}
    for name, p in model.named_parameters():
        train = False
        if name.startswith(prefix + "."):
            idx, _, rest = name[len(prefix) + 1:].partition(".")
            if int(idx) in layer_ids:
                hits = [m for m in modules if _matches(rest.split("."), m)]
                for m in hits:
                    used[m] = True
                train = not modules or bool(hits)
        else:
            hits = [m for m in sec.freeze_extra_modules if _matches(name.split("."), m)]
            for m in hits:
                used[m] = True
            train = bool(hits)
        p.requires_grad_(train)
    unused = [m for m, hit in used.items() if not hit]
    if unused:
        children = sorted({n.split(".")[0] for n, _ in layers[0].named_parameters()} |
                          {n.rsplit(".", 1)[0].split(".")[-1] for n, _ in layers[0].named_parameters()})
        outside = sorted({n.rsplit(".", 1)[0] for n, _ in model.named_parameters() if not n.startswith(prefix + ".")})
        raise TuneforgeError(
            f"freeze_trainable_modules/freeze_extra_modules name modules this model lacks: {', '.join(unused)}. "
            f"Inside a layer it has: {', '.join(children)}; outside the layers: {', '.join(outside)}")
    return model


def memory(shape, x):
    """The chosen layers' (chosen submodules') parameters and the extra modules train. The backward graph runs from
    the loss down to the lowest trained layer, or through every layer when the embeddings train."""
    from tuneforge.memory.footprint import EMBED, HEAD, Footprint, parameter_table, section, tensors

    sec: FreezeSection = section(FreezeSection, x)
    outer, layer = parameter_table(shape)
    n = min(abs(sec.freeze_trainable_layers), shape.layers)
    modules = [m for m in sec.freeze_trainable_modules if m != "all"]
    inside = [k for k in layer if not modules or any(_matches(k.split("."), m) for m in modules)]
    extra = [k for k in outer if any(_matches(k.split("."), m) for m in sec.freeze_extra_modules)]
    trained = n if inside else 0
    lowest = 0 if EMBED in extra or sec.freeze_trainable_layers < 0 else shape.layers - n
    return Footprint(tensors(layer, inside, n) + tensors(outer, extra), trained_layers=trained,
                     frozen_layers=shape.layers - lowest - trained,
                     head_gradient=HEAD in extra or (shape.tied and EMBED in extra),
                     detail={"method": f"{n} of {shape.layers} layers train" + (f" ({', '.join(modules)})" if modules else "")
                             + (f" + {', '.join(sec.freeze_extra_modules)}" if extra else "")})


register_method("freeze", FreezeSection, apply, memory=memory, fit=(("freeze", {}, 1.95),),
                help="Only the last (or first) N decoder layers train.")
