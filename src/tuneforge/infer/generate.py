"""Greedy or sampled answers from a base model plus an optional adapter, using the same chat template as training."""

import os


def load_for_inference(model_name_or_path: str = "smollm2-135m-instruct", adapter_name_or_path: str | None = None,
                       cache_dir: str | None = None, template: str = "auto"):
    """(model, tokenizer) ready for generation. With an adapter, its saved tokenizer and template are used."""
    import torch

    from tuneforge.config.schema import ModelSection
    from tuneforge.data.cache import cache_root
    from tuneforge.data.templates import apply_template
    from tuneforge.models import load_model, load_tokenizer, local_folder

    mcfg = ModelSection(model_name_or_path=model_name_or_path, adapter_name_or_path=adapter_name_or_path, cache_dir=cache_dir)
    folder = local_folder(mcfg, cache_root(cache_dir))
    tok_folder = adapter_name_or_path if adapter_name_or_path and os.path.isfile(
        os.path.join(adapter_name_or_path, "tokenizer_config.json")) else folder
    tokenizer = load_tokenizer(tok_folder, mcfg)
    if tok_folder == folder:
        apply_template(tokenizer, template)
    model = load_model(folder, mcfg, torch.float32)
    if adapter_name_or_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_name_or_path)
    model.config.use_cache = True
    model.eval()
    return model, tokenizer


def answer(model, tokenizer, question: str | list[dict], max_new_tokens: int = 64, **generate_kwargs) -> str:
    """The model's reply to one question (or a message list); greedy unless sampling kwargs are given."""
    import torch

    messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    kwargs = {"do_sample": False, **generate_kwargs}
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **kwargs)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
