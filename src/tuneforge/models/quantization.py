"""bitsandbytes quantization at load time (QLoRA): 4-bit NF4/FP4 with optional double quantization, or 8-bit."""

import logging

from tuneforge import TuneforgeError

log = logging.getLogger(__name__)


class _Once(logging.Filter):
    """Let a message through once (bitsandbytes logs a cast warning on every 8-bit matmul)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix, self.seen = prefix, False

    def filter(self, record):
        if record.getMessage().startswith(self.prefix):
            if self.seen:
                return False
            self.seen = True
        return True


def bnb_config(model_cfg, compute_dtype):
    """A `BitsAndBytesConfig` for `quantization_bit`, or None when the model is not quantized."""
    if not model_cfg.quantization_bit:
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TuneforgeError("quantization_bit needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_Once("MatMul8bitLt: inputs will be cast"))
    if model_cfg.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=model_cfg.quantization_type,
                              bnb_4bit_use_double_quant=model_cfg.double_quantization, bnb_4bit_compute_dtype=compute_dtype)


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def own_unquantized(model) -> int:
    """Copy the tensors a quantizing load left pointing into the memory-mapped checkpoint (embeddings, norms, the head:
    loaded without conversion when the file already has the compute dtype), so the mapping, and every file page the
    load read, is released. Returns the bytes copied. Tied parameters stay tied (one Parameter, copied once)."""
    import torch

    copied = 0
    with torch.no_grad():
        for tensors in (model.parameters(), model.buffers()):
            for t in tensors:
                if type(t).__name__ in ("Params4bit", "Int8Params") or t.device.type != "cpu":
                    continue
                t.data = t.data.clone()
                copied += t.numel() * t.element_size()
    return copied
