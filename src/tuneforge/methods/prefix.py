"""Prefix tuning and prompt tuning through peft: learned virtual tokens, the model itself frozen.
prefix: key/value vectors for every layer; prompt: input embeddings only."""

from dataclasses import dataclass

from tuneforge.config import field
from tuneforge.methods.registry import register_method


@dataclass
class PromptLearningSection:
    """Options of finetuning_type: prefix and finetuning_type: prompt."""

    num_virtual_tokens: int = field(20, help="Learned virtual tokens put before every input.")
    prefix_projection: bool = field(False, help="prefix only: produce the prefix through a small MLP (more parameters, often steadier).")

    def validate(self) -> list[str]:
        return [f"num_virtual_tokens must be > 0 (got {self.num_virtual_tokens})"] if self.num_virtual_tokens <= 0 else []

    def validate_run(self, cfg) -> list[str]:
        if cfg.data.packing:
            return [f"packing is not available with finetuning_type {cfg.method.finetuning_type}: peft ignores the position ids "
                    f"that keep packed examples apart; set packing: false"]
        return []


def _apply(kind: str):
    def apply(model, cfg):
        from peft import PeftModel, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

        from tuneforge.models.quantization import is_quantized

        if is_quantized(model):
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if cfg.model.adapter_name_or_path:
            return PeftModel.from_pretrained(model, cfg.model.adapter_name_or_path, is_trainable=True)
        sec: PromptLearningSection = cfg.method_section(kind)
        if kind == "prefix":
            peft_cfg = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=sec.num_virtual_tokens,
                                          prefix_projection=sec.prefix_projection)
        else:
            peft_cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=sec.num_virtual_tokens)
        return get_peft_model(model, peft_cfg)

    return apply


register_method("prefix", PromptLearningSection, _apply("prefix"), packs=False)
register_method("prompt", PromptLearningSection, _apply("prompt"), packs=False)
