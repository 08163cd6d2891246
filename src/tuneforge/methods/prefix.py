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


def _memory(kind: str):
    def memory(shape, x):
        """fp32 virtual tokens (peft's nn.Embedding), the model frozen: gradients pass through every layer. prompt:
        n x hidden input embeddings, which lengthen every example. prefix: keys and values for every layer,
        n x layers x 2 x token_dim (peft's token_dim: the key/value width); with prefix_projection peft's PrefixEncoder
        makes them with an MLP: embedding n x token_dim, Linear(token_dim, encoder_hidden_size), Tanh,
        Linear(encoder_hidden_size, layers x 2 x token_dim), encoder_hidden_size defaulting to token_dim."""
        from tuneforge.memory.footprint import ADAPTER, Footprint, Tensors, section

        sec: PromptLearningSection = section(PromptLearningSection, x)
        n, layers = sec.num_virtual_tokens, shape.layers
        if kind == "prompt":
            return Footprint((Tensors(n * shape.hidden, 1, ADAPTER, embedding=True),), frozen_layers=layers, extra_tokens=n,
                             detail={"method": f"{n} virtual tokens x {shape.hidden}"})
        token_dim = shape.kv_dim
        if not sec.prefix_projection:
            ts = (Tensors(n * layers * 2 * token_dim, 1, ADAPTER, embedding=True),)
        else:
            enc = token_dim
            ts = (Tensors(n * token_dim, 1, ADAPTER, embedding=True), Tensors(token_dim * enc, 1, ADAPTER), Tensors(enc, 1, ADAPTER),
                  Tensors(enc * layers * 2 * token_dim, 1, ADAPTER), Tensors(layers * 2 * token_dim, 1, ADAPTER))
        return Footprint(ts, frozen_layers=layers, detail={"method": f"{n} prefix tokens x {layers} layers x 2 x {token_dim}"
                                                                     + (" through an MLP" if sec.prefix_projection else "")})

    return memory


register_method("prefix", PromptLearningSection, _apply("prefix"), packs=False, adapter=True, quantizable=True, memory=_memory("prefix"),
                help="Learned key/value prefixes for every layer; the model stays frozen.")
register_method("prompt", PromptLearningSection, _apply("prompt"), packs=False, adapter=True, quantizable=True, memory=_memory("prompt"),
                help="Learned virtual input tokens; the model stays frozen.")
