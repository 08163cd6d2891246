"""GGUF -> Hugging Face folder, converted once (dequantized to fp32 safetensors) and cached."""

import hashlib
import logging
import os
import time

from tuneforge.models.aliases import ModelSource

log = logging.getLogger(__name__)


SAMPLE = 8 * 2**20  # bytes hashed at each end of the file


def content_digest(path: str) -> str:
    """A digest of the file's content: its size, first and last 8 MiB (metadata, tokenizer, first and last
    tensors). The same model installed in another venv or copied elsewhere maps to the same cache entry."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(SAMPLE))
        if size > 2 * SAMPLE:
            fh.seek(size - SAMPLE)
        h.update(fh.read(SAMPLE))
    return h.hexdigest()[:16]


def cached_folder(source: ModelSource, cache_root: str) -> str:
    """Where the conversion of this GGUF content lives (keyed by content, not by path or mtime)."""
    digest = content_digest(source.path)
    stem = os.path.splitext(source.gguf_file)[0]
    return os.path.join(cache_root, "gguf", f"{stem}-{digest}")


def convert(source: ModelSource, cache_root: str) -> str:
    """Return a plain HF folder for a GGUF source, converting it on first use.

    The folder is written to a temporary name and renamed when complete, so an interrupted
    conversion never leaves a half-written cache. Under torchrun the main process converts; the
    other ranks wait for its folder.
    """
    from tuneforge.distributed import is_main_process, main_process_first

    folder = cached_folder(source, cache_root)
    done = os.path.join(folder, "config.json")
    with main_process_first(f"converting {source.gguf_file} into {folder}", ready=lambda: os.path.isfile(done)):
        if os.path.isfile(done):
            return folder
        if not is_main_process():
            from tuneforge import TuneforgeError

            raise TuneforgeError(f"the main process did not convert {source.gguf_file} into {folder} (did it fail? is cache_dir "
                                 f"on a filesystem every rank sees?)")
        _convert_into(source, folder)
    return folder


def _convert_into(source: ModelSource, folder: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    log.info("converting %s to a Hugging Face folder (once; cached in %s)", source.gguf_file, folder)
    tok = AutoTokenizer.from_pretrained(source.folder, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source.folder, gguf_file=source.gguf_file, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are
    # already dequantized, so rebuild a plain model from the config and load the state dict.
    cfg = model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(cfg, attr):
            delattr(cfg, attr)
    state = {k: v.to(torch.float32) for k, v in model.state_dict().items()}
    del model
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and getattr(cfg, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {source.path} lost weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
    plain.tie_weights()
    from tuneforge.fsutil import atomic_folder

    with atomic_folder(folder, keep_existing=True) as tmp:  # content-keyed: another job's identical copy may land first
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    log.info("converted in %.1f s", time.time() - t0)
