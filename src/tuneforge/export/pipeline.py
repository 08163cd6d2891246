"""`tuneforge export`: load the trained model, record its answers to the probe chats, merge, write the merged folder
(export_format hf) or one GGUF (export_format gguf), check what was written against the recorded answers, and put
the folder in place only when the check passes (export_verify: error) or is allowed to fail (warn) or is off."""

import gc
import logging
import os

from tuneforge import TuneforgeError

log = logging.getLogger(__name__)


def _check_target(export_dir: str, overwrite: bool) -> None:
    if os.path.isfile(export_dir):
        raise TuneforgeError(f"export_dir `{export_dir}` is a file; choose a folder")
    if os.path.isdir(export_dir) and os.listdir(export_dir) and not overwrite:
        raise TuneforgeError(f"export_dir `{export_dir}` is not empty; choose a new export_dir, or set export_overwrite: true to replace it")


def _source_pre_tokenizer(model_name_or_path: str) -> str | None:
    """The `tokenizer.ggml.pre` of a GGUF base (transformers' reading of the GGUF tokenizer does not keep it)."""
    from tuneforge.models.aliases import resolve

    source = resolve(model_name_or_path)
    if not source.gguf_file:
        return None
    from tuneforge.export.runtimes import gguf_metadata

    return gguf_metadata(source.path).get("tokenizer.ggml.pre")


def _modelfile(tmp: str, tokenizer, source: str, generation) -> None:
    from tuneforge.export.modelfile import ollama_modelfile

    with open(os.path.join(tmp, "Modelfile"), "w", encoding="utf-8") as fh:
        fh.write(ollama_modelfile(tokenizer, source=source, generation=generation))


def _write_hf(cfg, merged, tokenizer, tmp: str) -> dict:
    import torch

    exp = cfg.export
    model = merged.to(getattr(torch, exp.export_dtype))
    model.config.use_cache = True
    model.save_pretrained(tmp, max_shard_size=f"{int(exp.export_size * 1000)}MB")
    tokenizer.save_pretrained(tmp)
    if exp.export_ollama:
        _modelfile(tmp, tokenizer, ".", None)
    return {"format": "hf", "dtype": exp.export_dtype}


def _write_gguf(cfg, merged, tokenizer, tmp: str) -> dict:
    from tuneforge.export.gguf_writer import write_gguf

    exp = cfg.export
    info = write_gguf(merged, tokenizer, os.path.join(tmp, "model.gguf"), exp.gguf_quantization, generation=cfg.generation,
                      name=os.path.basename(os.path.abspath(exp.export_dir)),
                      pre_tokenizer=_source_pre_tokenizer(cfg.model.model_name_or_path))
    if exp.export_ollama:
        _modelfile(tmp, tokenizer, "./model.gguf", cfg.generation)
    return {"format": "gguf", "file": "model.gguf", "quantization": exp.gguf_quantization, "architecture": info["architecture"],
            "tensor_types": sorted(set(info["tensor_types"].values()))}


def _check_merged_in_memory(cfg, merged, tokenizer, check) -> dict:
    """The merge itself, before any conversion (export_format gguf checks the merged weights and then the file)."""
    from tuneforge.export.runtimes import TransformersRuntime
    from tuneforge.export.verify import TOLERANCE, compare_logits

    side = TransformersRuntime(merged, tokenizer, "transformers (merged weights, float32, in memory)")
    return {"runtime": side.runtime, **compare_logits(check["ref"], side, TOLERANCE["float32"], cfg.export.export_probe_tokens)}


def _check_hf(cfg, tmp: str, check) -> dict:
    from tuneforge.export.runtimes import load_hf_folder
    from tuneforge.export.verify import TOLERANCE, compare_logits, compare_tokenizer

    side = load_hf_folder(tmp, cfg.model.trust_remote_code)
    result = compare_logits(check["ref"], side, TOLERANCE[cfg.export.export_dtype], cfg.export.export_probe_tokens)
    result["problems"] = compare_tokenizer(check["ref"], check["trained"], side) + result["problems"]
    return {"runtime": side.runtime, **result}


def _check_gguf(cfg, tmp: str, check) -> dict:
    """The GGUF through llama.cpp when llama-cpp-python is installed, else as transformers' GGUF loader reads it;
    its tokenizer facts (template, special tokens) as transformers reads them from the file."""
    from tuneforge.export.runtimes import LlamaCppRuntime, llama_cpp_available, load_gguf_transformers
    from tuneforge.export.verify import TOLERANCE, compare_logits, compare_tokenizer

    exp, ref = cfg.export, check["ref"]
    path = os.path.join(tmp, "model.gguf")
    hf_side = load_gguf_transformers(path)
    runner = hf_side
    if llama_cpp_available():
        del hf_side.model  # only its tokenizer is needed from here on
        gc.collect()
        runner = LlamaCppRuntime(path, max(len(p["ids"]) + exp.export_probe_tokens for p in ref) + 8)
    result = compare_logits(ref, runner, TOLERANCE.get(exp.gguf_quantization), exp.export_probe_tokens)
    result["problems"] = compare_tokenizer(ref, check["trained"], hf_side, encoder=runner, stop_ids=runner.stop_ids()) + result["problems"]
    return {"runtime": runner.runtime, **result}


def _report_failure(report: dict, export_dir: str) -> str:
    """Keep a failed check's report where the user can read it: beside the (untouched) export_dir."""
    import json

    path = os.path.abspath(export_dir).rstrip(os.sep) + ".export_report.json"
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, ensure_ascii=False)
    os.replace(path + ".tmp", path)  # whole or not at all
    return path


def export_model(cfg) -> str:
    """Merge and save to `export_dir`, then check what was written against the trained model.

    export_format hf: safetensors shards of at most `export_size` GB in `export_dtype` plus the tokenizer;
    gguf: one `model.gguf` in `gguf_quantization`. With `export_ollama`, a Modelfile. With export_verify error/warn,
    `export_report.json` in the folder. Everything is written to a temporary folder and moved into place at the end.

    Raises:
        TuneforgeError: a taken export_dir, an unmergeable adapter or unsupported GGUF architecture (before any
            weights are written), or, with export_verify: error, an export that differs from the trained model;
            that report is kept at `<export_dir>.export_report.json` and export_dir is left as it was.
    """
    from tuneforge.export.merge import load_trained, merge_loaded
    from tuneforge.export.runtimes import TransformersRuntime
    from tuneforge.export.verify import load_probes, reference, summarize, write_report
    from tuneforge.fsutil import atomic_folder

    exp = cfg.export
    _check_target(exp.export_dir, exp.export_overwrite)
    probes = load_probes(exp.export_probe_file) if exp.export_verify != "off" else None
    model, tokenizer = load_trained(cfg.model, template=cfg.data.template)
    if exp.export_format == "gguf":
        from tuneforge.export.gguf_writer import arch_spec

        arch_spec(model.config)  # refuse an unsupported architecture before merging anything
    check = None
    if probes:
        trained = TransformersRuntime(model, tokenizer, "transformers (base + adapter, float32)")
        check = {"trained": trained, "ref": reference(trained, probes, exp.export_probe_tokens), "sides": {}}
        trained.model = None  # merged in place below; only the trained tokenizer is compared from here on
    merged = merge_loaded(model)
    del model
    gguf = exp.export_format == "gguf"
    with atomic_folder(exp.export_dir, public=True) as tmp:  # an existing export_dir stays until the new one is complete
        if check is not None and gguf:
            check["sides"]["merged"] = _check_merged_in_memory(cfg, merged, tokenizer, check)
        fmt = (_write_gguf if gguf else _write_hf)(cfg, merged, tokenizer, tmp)
        del merged
        gc.collect()
        if check is not None:
            check["sides"]["gguf" if gguf else "merged"] = (_check_gguf if gguf else _check_hf)(cfg, tmp, check)
            report = summarize(check["ref"], check["sides"], tokenizer, fmt)
            if not report["passed"] and exp.export_verify == "error":
                path = _report_failure(report, exp.export_dir)
                raise TuneforgeError(f"export check failed, nothing was written to {exp.export_dir}: {report['verdict']}; "
                                     f"full report: {path}; set export_verify: warn to keep the export anyway")
            write_report(report, tmp)
            (log.info if report["passed"] else log.warning)("export check: %s", report["verdict"])
    log.info("exported %s to %s", fmt.get("quantization", exp.export_dtype), os.path.abspath(exp.export_dir))
    return exp.export_dir
