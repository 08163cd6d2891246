"""GaLore (galore-torch through the HF Trainer): every weight trains, but the gradients of the targeted
matrices are projected to rank r, so their AdamW states are r x n instead of m x n."""

from dataclasses import dataclass

from tuneforge.config import field
from tuneforge.methods.full import apply as apply_full
from tuneforge.methods.registry import register_method


@dataclass
class GaloreSection:
    """Options of finetuning_type: galore (LLaMA-Factory: finetuning_type: full + use_galore: true)."""

    galore_target: list[str] = field(["all"], help="Linear layers whose gradients are projected: all (attention and MLP), or names.")
    galore_rank: int = field(16, help="Rank of the gradient projection; lower saves more optimizer memory.")
    galore_update_interval: int = field(200, help="Steps between recomputing the projection (SVD of the gradient).")
    galore_scale: float = field(2.0, help="Scale applied to the projected update.")
    galore_layerwise: bool = field(False, help="Update each layer during backward and free its gradient at once (no gradient accumulation).")

    def validate(self) -> list[str]:
        problems = []
        if self.galore_rank <= 0:
            problems.append(f"galore_rank must be > 0 (got {self.galore_rank})")
        if self.galore_update_interval <= 0:
            problems.append(f"galore_update_interval must be > 0 (got {self.galore_update_interval})")
        return problems

    def validate_run(self, cfg) -> list[str]:
        import torch

        import importlib.util

        problems = []
        if importlib.util.find_spec("galore_torch") is None:
            problems.append("finetuning_type galore needs galore-torch: pip install 'tuneforge[galore]' (or pip install galore-torch)")
        optim = cfg.train.args.get("optim")
        if optim and not str(optim).startswith("galore_"):
            problems.append(f"finetuning_type galore sets the optimizer itself; remove optim: {optim} (or use a galore_* one)")
        if optim and "8bit" in str(optim) and not torch.cuda.is_available():
            problems.append(f"optim: {optim} needs CUDA (bitsandbytes' GaLore 8-bit kernels); use galore_adamw on the CPU")
        if self.galore_layerwise and cfg.train.get("gradient_accumulation_steps", 1) > 1:
            problems.append("galore_layerwise steps each layer during backward, so gradient_accumulation_steps must be 1")
        return problems


def training_args(cfg) -> dict:
    sec: GaloreSection = cfg.method_section("galore")
    optim = cfg.train.args.get("optim") or ("galore_adamw_layerwise" if sec.galore_layerwise else "galore_adamw")
    targets = [r".*(self_attn|attention|attn|mlp|feed_forward|ffn).*"] if sec.galore_target == ["all"] else list(sec.galore_target)
    return {"optim": optim, "optim_target_modules": targets,
            "optim_args": f"rank={sec.galore_rank}, update_proj_gap={sec.galore_update_interval}, scale={sec.galore_scale}, proj_type=std"}


def llamafactory(flat: dict) -> tuple[dict, list[str]]:
    """LLaMA-Factory's `use_galore: true` with `finetuning_type: full` is `finetuning_type: galore` here."""
    if "use_galore" not in flat:
        return flat, []
    flat = dict(flat)
    if flat.pop("use_galore") not in (True, "true", "True", 1):
        return flat, []
    if flat.get("finetuning_type", "lora") in ("full", "galore"):
        flat["finetuning_type"] = "galore"
        return flat, ["use_galore: true with finetuning_type: full -> finetuning_type: galore"]
    from tuneforge.config.errors import ConfigError

    raise ConfigError([("use_galore", f"use_galore: true trains all weights with GaLore; it needs finetuning_type: full "
                                      f"(got `{flat.get('finetuning_type', 'lora')}`), or write finetuning_type: galore")])


def memory(shape, x):
    """Every weight trains; galore-torch projects a targeted m x n gradient to max(m,n) x r (AdamW states 2 x that)
    with an r x min(m,n) projector; the other parameters get plain AdamW. Layerwise: each layer is stepped and its
    gradient freed during backward."""
    from types import SimpleNamespace

    from tuneforge.memory.footprint import BYTES, Footprint, all_tensors, linear_modules, optim_target_matches, section

    sec: GaloreSection = section(GaloreSection, x)
    r, b = sec.galore_rank, BYTES[x.dtype]
    # the targets the Trainer gets (optim_target_modules), matched the way transformers matches them
    targets = training_args(SimpleNamespace(method_section=lambda name=None: sec, train=SimpleNamespace(args={})))["optim_target_modules"]
    ts = all_tensors(shape)
    projected, matrices, values = 0, 0, 0
    for name, m, n in linear_modules(shape):
        if optim_target_matches(targets, name):
            projected += 2 * r * max(m, n) * 4 + r * min(m, n) * 4
            matrices, values = matrices + 1, values + m * n
    rest = sum(t.values for t in ts) - values
    detail = {"optimizer": f"GaLore rank {r}: projected states 2 x r x max(m,n) + projector r x min(m,n) per matrix"
                           f"{'' if sec.galore_target == ['all'] else f' ({matrices} targeted)'}; AdamW on the rest"}
    grads = None
    if sec.galore_layerwise:
        grads = (shape.layer_params + shape.embedding_params) * b
        detail["gradients"] = f"layerwise: ~one layer + embeddings x {b} B"
    return Footprint(ts, trained_layers=shape.layers, head_gradient=True, optimizer_bytes=projected + rest * 2 * b,
                     gradient_bytes=grads, detail=detail)


register_method("galore", GaloreSection, apply_full, training_args=training_args, llamafactory=llamafactory, memory=memory,
                fit=(("galore", {}, 0.40),),
                help="Every weight trains; gradients are projected to low rank, so optimizer states shrink.")
