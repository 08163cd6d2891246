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


register_method("galore", GaloreSection, apply_full, training_args=training_args)
