"""Load the trained model (base + adapter, fp32) and merge LoRA/DoRA adapters into the base weights."""

from tuneforge import TuneforgeError


def load_trained(model, adapter: str | None = None, cache_dir: str | None = None, template: str = "auto"):
    """(base + adapter, unmerged, in fp32; tokenizer with the adapter's saved template): the model as it was trained.

    `model` is the ModelSection (`cfg.model`; its adapter_name_or_path and trust_remote_code apply) or a model
    name or path; `adapter` and `cache_dir` override the section's. The base is loaded unquantized in float32
    even when quantization_bit is set (a QLoRA adapter is merged into full-precision weights).

    Raises:
        TuneforgeError: naming adapter_name_or_path when it holds prefix/prompt tuning, which cannot be merged.
    """
    from tuneforge.infer.generate import inference_model_section, load_for_inference

    mcfg = inference_model_section(model, adapter, cache_dir)
    model, tokenizer = load_for_inference(mcfg, template=template, full_precision=True)
    if mcfg.adapter_name_or_path and model.peft_config["default"].is_prompt_learning:
        raise TuneforgeError(f"adapter_name_or_path `{mcfg.adapter_name_or_path}` holds prefix/prompt tuning, which adds virtual "
                             f"tokens rather than weight updates, so it cannot be merged; serve it with --adapter instead")
    return model, tokenizer


def merge_loaded(model):
    """The adapter merged into the base weights (BA added once, in fp32); a plain model is returned as it is."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def merge_adapter(model, adapter: str | None = None, cache_dir: str | None = None, template: str = "auto"):
    """(merged model in fp32, tokenizer with the adapter's saved template). Without an adapter, the base itself.
    Casting to the export dtype happens afterwards."""
    trained, tokenizer = load_trained(model, adapter, cache_dir, template)
    return merge_loaded(trained), tokenizer
