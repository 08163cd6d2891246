"""Load the tokenizer and model a RunConfig names: folder, GGUF (via the conversion cache) or alias."""

import logging

from tuneforge import TuneforgeError
from tuneforge.models import aliases, gguf

log = logging.getLogger(__name__)


def local_folder(model_cfg, cache_root: str) -> str:
    """A local HF folder for `model_name_or_path`, converting a GGUF file once if needed."""
    source = aliases.resolve(model_cfg.model_name_or_path)
    return gguf.convert(source, cache_root) if source.gguf_file else source.path


def resolve_dtype(model_cfg, train_args: dict):
    """The torch dtype of the weights: the configured one, or for `auto` `precision.auto_dtype` without a method
    (fp32 on a CPU, the bf16/fp16 flag's dtype on a GPU). A resolved config already names the run's choice, which
    for LoRA on a CPU with fast bf16 may be bf16 (`config.resolve` asks `precision.auto_dtype_of`)."""
    import torch

    from tuneforge.precision import auto_dtype

    return getattr(torch, auto_dtype(model_cfg, train_args)[0])


def load_tokenizer(folder: str, model_cfg):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=model_cfg.trust_remote_code)
    if not getattr(tok, "is_fast", False):
        raise TuneforgeError(f"the tokenizer of `{model_cfg.model_name_or_path}` has no fast (Rust) version; tuneforge needs one for loss masks")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
        log.info("tokenizer has no pad token; using eos `%s` (padding is masked out of the loss)", tok.eos_token)
    return tok


def load_tokenizer_only(model_cfg, cache_root: str):
    """The tokenizer alone: from the model folder, or a GGUF file's converted folder, or (not converted yet) the
    GGUF file's own metadata, so nothing weight-sized is read."""
    import os

    from transformers import AutoTokenizer

    source = aliases.resolve(model_cfg.model_name_or_path)
    if not source.gguf_file:
        return load_tokenizer(source.path, model_cfg)
    folder = gguf.cached_folder(source, cache_root)
    if os.path.isfile(os.path.join(folder, "config.json")):
        return load_tokenizer(folder, model_cfg)
    tok = AutoTokenizer.from_pretrained(source.folder, gguf_file=source.gguf_file)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(folder: str, model_cfg, dtype, attn_implementation: str | None = None):
    """AutoModelForCausalLM from a local folder with the configured dtype and attention kernel
    (`attn_implementation` overrides the configured one, e.g. with `sdpa_packed` for packed rows)."""
    from transformers import AutoModelForCausalLM

    from tuneforge.models.quantization import bnb_config, own_unquantized

    quant = bnb_config(model_cfg, dtype)
    extra = {"quantization_config": quant} if quant is not None else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn_implementation or model_cfg.attn_implementation,
                                                     trust_remote_code=model_cfg.trust_remote_code, **extra)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise TuneforgeError(f"`{model_cfg.model_name_or_path}` ships its own model code; set trust_remote_code: true if you trust it") from None
        if "attn_implementation" in str(e) or "attention" in str(e).lower():
            raise TuneforgeError(f"attn_implementation `{model_cfg.attn_implementation}` is not available here: {str(e).splitlines()[0]}; use sdpa") from None
        raise
    if quant is not None:
        own_unquantized(model)  # unmaps the checkpoint: its pages would otherwise stay resident all run
    model.config.use_cache = False  # no KV cache while training
    return model
