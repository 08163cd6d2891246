"""Merge LoRA/DoRA adapters into the base weights (in fp32, then cast) and save sharded safetensors."""

import logging
import os

from tuneforge import TuneforgeError

log = logging.getLogger(__name__)


def merge_adapter(model, adapter: str | None = None, cache_dir: str | None = None, template: str = "auto"):
    """(merged model in fp32, tokenizer with the adapter's saved template). Without an adapter, the base itself.

    `model` is the ModelSection (`cfg.model`; its adapter_name_or_path and trust_remote_code apply) or a model
    name or path; `adapter` and `cache_dir` override the section's. The base is loaded unquantized in float32
    even when quantization_bit is set (a QLoRA adapter is merged into full-precision weights), so the merge adds
    BA exactly once in fp32; casting to the export dtype happens afterwards.
    """
    from tuneforge.infer.generate import inference_model_section, load_for_inference

    mcfg = inference_model_section(model, adapter, cache_dir)
    adapter_name_or_path = mcfg.adapter_name_or_path
    model, tokenizer = load_for_inference(mcfg, template=template, full_precision=True)
    if adapter_name_or_path:
        if model.peft_config["default"].is_prompt_learning:
            raise TuneforgeError(f"adapter_name_or_path `{adapter_name_or_path}` holds prefix/prompt tuning, which adds virtual "
                                 f"tokens rather than weight updates, so it cannot be merged; serve it with --adapter instead")
        model = model.merge_and_unload()
    return model, tokenizer


def _check_target(export_dir: str, overwrite: bool) -> None:
    if os.path.isfile(export_dir):
        raise TuneforgeError(f"export_dir `{export_dir}` is a file; choose a folder")
    if os.path.isdir(export_dir) and os.listdir(export_dir) and not overwrite:
        raise TuneforgeError(f"export_dir `{export_dir}` is not empty; choose a new export_dir, or set export_overwrite: true to replace it")


def export_model(cfg) -> str:
    """Merge and save to `export_dir`: safetensors shards of at most `export_size` GB in `export_dtype`, the
    tokenizer with its chat template, and (with `export_ollama`) a Modelfile. Written to a temporary folder
    and moved into place at the end, so a failed export leaves nothing half-written.
    """
    import torch

    exp = cfg.export
    _check_target(exp.export_dir, exp.export_overwrite)
    model, tokenizer = merge_adapter(cfg.model, template=cfg.data.template)
    model = model.to(getattr(torch, exp.export_dtype))
    model.config.use_cache = True
    from tuneforge.fsutil import atomic_folder

    with atomic_folder(exp.export_dir, public=True) as tmp:  # an existing export_dir stays until the new one is complete
        model.save_pretrained(tmp, max_shard_size=f"{int(exp.export_size * 1000)}MB")
        tokenizer.save_pretrained(tmp)
        if exp.export_ollama:
            from tuneforge.export.modelfile import ollama_modelfile

            with open(os.path.join(tmp, "Modelfile"), "w", encoding="utf-8") as fh:
                fh.write(ollama_modelfile(tokenizer))
    log.info("exported %s model to %s", exp.export_dtype, os.path.abspath(exp.export_dir))
    return exp.export_dir
