"""LISA (layerwise importance-sampled AdamW): embeddings, LM head and final norm train (switchable off);
`lisa_layers` decoder layers, sampled uniformly without replacement, train for `lisa_interval` steps; the rest
are frozen without gradients. Unlike the public implementations, the optimizer state of layers switched off is
released at every switch, so memory stays at (embeddings + head + lisa_layers layers), not creeping to full AdamW.

The active set of switch k is a pure function of (seed, k), so resuming at any step restores it exactly; each
checkpoint also records it (checkpoint_state), and a resume keeps the recorded set for the interval in progress.
The optimizer is built over every parameter once (a frozen parameter has no gradient, so AdamW skips it)."""

import functools
import logging
import random
from dataclasses import dataclass

from tuneforge.config import field
from tuneforge.methods.registry import register_method
from tuneforge.models.arch import decoder_layers

log = logging.getLogger(__name__)


@dataclass
class LisaSection:
    """Options of finetuning_type: lisa."""

    lisa_layers: int = field(2, help="Decoder layers that train at a time (gamma in the paper).")
    lisa_interval: int = field(20, help="Optimizer steps between re-sampling the active layers (K in the paper).")
    lisa_train_embeddings: bool = field(True, help="Embeddings, LM head and final norm always train; off saves most memory on big vocabularies.")

    def validate(self) -> list[str]:
        problems = []
        if self.lisa_layers <= 0:
            problems.append(f"lisa_layers must be > 0 (got {self.lisa_layers})")
        if self.lisa_interval <= 0:
            problems.append(f"lisa_interval must be > 0 (got {self.lisa_interval})")
        return problems

    def validate_model(self, shape) -> list[str]:
        if self.lisa_layers > shape.layers:
            return [f"lisa_layers {self.lisa_layers} is more than the model's {shape.layers} decoder layers; use 1 to {shape.layers}"]
        return []


def active_layers(num_layers: int, k: int, seed: int, switch: int) -> list[int]:
    """The layers active during switch period `switch` (steps [switch*interval, (switch+1)*interval))."""
    return sorted(random.Random(seed * 1_000_003 + switch).sample(range(num_layers), min(k, num_layers)))


def _set_layers(model, layers, active: set[int], optimizer=None) -> int:
    """Unfreeze `active` layers, freeze the others; release gradients and optimizer state of those switched off.
    Returns the number of parameter tensors whose optimizer state was released."""
    state = getattr(getattr(optimizer, "optimizer", optimizer), "state", None)
    released = 0
    for i, layer in enumerate(layers):
        on = i in active
        for p in layer.parameters():
            if p.requires_grad and not on:
                p.grad = None
                if state is not None and p in state:
                    del state[p]
                    released += 1
            p.requires_grad_(on)
    return released


def apply(model, cfg):
    sec: LisaSection = cfg.method_section("lisa")
    prefix, layers = decoder_layers(model)
    for name, p in model.named_parameters():
        p.requires_grad_(sec.lisa_train_embeddings and not name.startswith(prefix + "."))
    _set_layers(model, layers, set(active_layers(len(layers), sec.lisa_layers, cfg.data.seed, 0)))
    return model


def optimizer(model, cfg, args):
    """One optimizer over every parameter, so switching layers on later needs no new optimizer."""
    from transformers import Trainer
    from transformers.trainer_pt_utils import get_parameter_names

    opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    decay = set(get_parameter_names(model, [__import__("torch").nn.LayerNorm], ["bias", "layernorm", "rmsnorm", "norm"]))
    seen, groups = set(), {True: [], False: []}
    for name, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            groups[name in decay].append(p)
    return opt_cls([{"params": groups[True], "weight_decay": args.weight_decay},
                    {"params": groups[False], "weight_decay": 0.0}], **opt_kwargs)


class LisaCallback:
    """Switch the active layers every `interval` optimizer steps (at the first micro-batch of a step). The Trainer gets
    it mixed with TrainerCallback (`callbacks`), so registering the method does not import transformers."""

    def __init__(self, k: int, interval: int, seed: int, release_state: bool = True):
        self.k, self.interval, self.seed, self.release_state = k, interval, seed, release_state
        self.current, self.restored = None, None
        self.history: list[tuple[int, list[int]]] = []  # (step, active layers) at each switch

    def checkpoint_state(self) -> dict:
        """Saved in each checkpoint (train/resume_fingerprint.py): the switch in progress and its active layers."""
        return {"switch": self.current, "active": self.history[-1][1] if self.history else None,
                "k": self.k, "interval": self.interval, "seed": self.seed}

    def restore_checkpoint_state(self, saved: dict) -> None:
        """On resume: the switch in progress keeps the layers it was saved with (the same as `active_layers` gives,
        unless the sampling settings changed under ignore_data_skip); later switches sample as usual."""
        self.restored = saved

    def _switch(self, model, optimizer, step: int):
        switch = step // self.interval
        if switch == self.current:
            return
        _, layers = decoder_layers(model)
        active = active_layers(len(layers), self.k, self.seed, switch)
        saved, self.restored = self.restored, None
        if (saved and saved.get("switch") == switch and saved.get("interval") == self.interval and saved.get("active") is not None
                and saved["active"] != active):
            log.warning("LISA: the checkpoint trained layers %s in this interval, not the %s sampled now (lisa settings or "
                        "seed changed); keeping the checkpoint's until the next switch", saved["active"], active)
            active = list(saved["active"])
        released = _set_layers(model, layers, set(active), optimizer if self.release_state else None)
        self.current = switch
        self.history.append((step, active))
        log.info("LISA step %d: layers %s train; released optimizer state of %d tensors", step, active, released)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
        self.current = None
        self._switch(model, optimizer, state.global_step)

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kw):
        self._switch(model, optimizer, state.global_step)


def callbacks(cfg):
    sec: LisaSection = cfg.method_section("lisa")
    return [_trainer_callback()(sec.lisa_layers, sec.lisa_interval, cfg.data.seed)]


@functools.cache
def _trainer_callback() -> type:
    from transformers import TrainerCallback

    return type("LisaCallback", (LisaCallback, TrainerCallback), {"__doc__": LisaCallback.__doc__})


def memory(shape, x):
    """`lisa_layers` layers train at a time (their optimizer state is released at each switch), plus embeddings, LM
    head and final norm unless switched off. Gradients flow through every layer (to the embeddings, or in the worst
    case from the lowest active layer)."""
    from tuneforge.memory.footprint import Footprint, parameter_table, section, tensors

    sec: LisaSection = section(LisaSection, x)
    outer, layer = parameter_table(shape)
    k = min(sec.lisa_layers, shape.layers)
    return Footprint(tensors(layer, layer, k) + (tensors(outer, outer) if sec.lisa_train_embeddings else ()),
                     trained_layers=k, frozen_layers=shape.layers - k, head_gradient=sec.lisa_train_embeddings,
                     detail={"method": f"{k} of {shape.layers} layers active"
                             + (" + embeddings, head and final norm" if sec.lisa_train_embeddings else "")})


RENAMED = {"lisa_activated_layers": "lisa_layers", "lisa_interval_steps": "lisa_interval"}  # LMFlow's names


def llamafactory(flat: dict) -> tuple[dict, list[str]]:
    """LMFlow's LISA keys (which LLaMA-Factory users bring along) under our names."""
    flat, notes = dict(flat), []
    for old, new in RENAMED.items():
        if old in flat:
            flat[new] = flat.pop(old)
            notes.append(f"{old} -> {new}")
    return flat, notes


register_method("lisa", LisaSection, apply, optimizer=optimizer, callbacks=callbacks, memory=memory, llamafactory=llamafactory, fit=(("lisa", {}, 1.00),),
                help="A few sampled decoder layers train at a time (plus embeddings and head); the sample changes every K steps.")
