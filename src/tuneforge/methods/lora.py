"""LoRA through peft: low-rank adapters on the chosen linear layers, the base frozen."""

from dataclasses import dataclass

from tuneforge import TuneforgeError
from tuneforge.config import field
from tuneforge.methods.registry import register_method
from tuneforge.models.arch import linear_module_names


@dataclass
class LoraSection:
    """Options of finetuning_type: lora."""

    lora_rank: int = field(8, help="Rank r of the adapters; higher fits more and costs more memory.")
    lora_alpha: int | None = field(None, help="Scale alpha (update = alpha/r * BA); default 2 x lora_rank.")
    lora_dropout: float = field(0.0, help="Dropout on the adapter input (0.05-0.1 for small data).")
    lora_target: list[str] = field(["all"], help="Linear layers to adapt: all, or names such as q_proj,v_proj.")
    additional_target: list[str] | None = field(None, help="Modules trained in full and saved with the adapter (e.g. embed_tokens).")

    def validate(self) -> list[str]:
        problems = []
        if self.lora_rank <= 0:
            problems.append(f"lora_rank must be > 0 (got {self.lora_rank})")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            problems.append(f"lora_alpha must be > 0 (got {self.lora_alpha})")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1) (got {self.lora_dropout})")
        if not self.lora_target:
            problems.append("lora_target is empty; use `all` or names such as q_proj,v_proj")
        return problems


def lora_config_from(sec: LoraSection, model):
    """A peft LoraConfig from the section; `all` means every linear layer but the output head."""
    from peft import LoraConfig, TaskType

    if sec.lora_target == ["all"]:
        targets = "all-linear"
    else:
        available = linear_module_names(model)
        missing = [t for t in sec.lora_target if t not in available]
        if missing:
            raise TuneforgeError(f"lora_target names layers this model lacks: {', '.join(missing)}; "
                                 f"its linear layers are: {', '.join(available)} (or use `all`)")
        targets = list(sec.lora_target)
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=sec.lora_rank, lora_alpha=sec.lora_alpha or 2 * sec.lora_rank,
        lora_dropout=sec.lora_dropout, target_modules=targets, modules_to_save=sec.additional_target,
    )


def apply(model, cfg):
    from peft import PeftModel, get_peft_model

    adapter = cfg.model.adapter_name_or_path
    if adapter:
        return PeftModel.from_pretrained(model, adapter, is_trainable=True)
    return get_peft_model(model, lora_config_from(cfg.method_section("lora"), model))


register_method("lora", LoraSection, apply)
