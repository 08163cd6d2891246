"""Greedy or sampled answers from a base model plus an optional adapter, using the same chat template as training."""

import dataclasses
import logging
import os

log = logging.getLogger(__name__)


def inference_model_section(model="smollm2-135m-instruct", adapter: str | None = None, cache_dir: str | None = None):
    """The ModelSection to load: `model` as given (a ModelSection, e.g. `cfg.model`, or a model name/path), with
    `adapter` and `cache_dir` overriding its own when given."""
    from tuneforge.config.schema import ModelSection

    mcfg = model if isinstance(model, ModelSection) else ModelSection(model_name_or_path=model)
    overrides = {k: v for k, v in (("adapter_name_or_path", adapter), ("cache_dir", cache_dir)) if v is not None}
    return dataclasses.replace(mcfg, **overrides) if overrides else mcfg


def load_for_inference(model="smollm2-135m-instruct", adapter: str | None = None, cache_dir: str | None = None,
                       template: str = "auto", *, train_args: dict | None = None, full_precision: bool = False):
    """(model, tokenizer) ready for generation, loaded the way training loads them.

    Args:
        model: a ModelSection (`cfg.model`: its torch_dtype, quantization_bit/type, double_quantization and
            trust_remote_code apply) or just a model name or path with default settings.
        adapter: an adapter folder (overrides the section's adapter_name_or_path). With an adapter, its saved
            tokenizer and chat template are used.
        cache_dir: overrides the section's cache_dir.
        template: the chat template when the base model's tokenizer is used.
        train_args: the training flags (`cfg.train.args`); with torch_dtype auto on a GPU, bf16/fp16 pick the dtype.
        full_precision: float32 and unquantized whatever the section says (for merging an adapter); stays on the CPU.
    """
    import torch

    from tuneforge.data.cache import cache_root
    from tuneforge.data.templates import apply_template
    from tuneforge.models import load_model, load_tokenizer, local_folder, resolve_dtype
    from tuneforge.models.quantization import is_quantized

    mcfg = inference_model_section(model, adapter, cache_dir)
    if full_precision:
        if mcfg.quantization_bit:
            log.info("loading the base unquantized in float32 (not in %d bits as quantization_bit says), so the adapter "
                     "merges into full-precision weights", mcfg.quantization_bit)
            mcfg = dataclasses.replace(mcfg, quantization_bit=None)
        dtype = torch.float32
    else:
        dtype = resolve_dtype(mcfg, train_args or {})
    adapter = mcfg.adapter_name_or_path
    folder = local_folder(mcfg, cache_root(mcfg.cache_dir))
    tok_folder = adapter if adapter and os.path.isfile(os.path.join(adapter, "tokenizer_config.json")) else folder
    tokenizer = load_tokenizer(tok_folder, mcfg)
    if tok_folder == folder:
        apply_template(tokenizer, template)
    model = load_model(folder, mcfg, dtype)
    if not full_precision and not is_quantized(model) and torch.cuda.is_available():
        model = model.to("cuda")  # bitsandbytes already placed a quantized model
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.config.use_cache = True
    model.eval()
    return model, tokenizer


def answer(model, tokenizer, question: str | list[dict], max_new_tokens: int = 64, **generate_kwargs) -> str:
    """The model's reply to one question (or a message list); greedy unless sampling kwargs are given."""
    import torch

    messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    kwargs = {"do_sample": False, **generate_kwargs}
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **kwargs)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
