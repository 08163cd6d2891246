"""A merged Llama-family model (Llama, SmolLM2, Mistral, Qwen 2, Qwen 3) as one GGUF file for llama.cpp and Ollama.

Tensors get llama.cpp's names (from gguf's own name map); Llama/Mistral Q and K rows are reordered from the
half-split rotary layout transformers uses to the interleaved one llama.cpp's Llama graph uses; 2-D weights are
quantized with gguf's numpy quantizers, 1-D ones (norms, biases) stay float32. Other architectures are refused
with what is missing."""

import logging
from dataclasses import dataclass

from tuneforge import TuneforgeError

log = logging.getLogger(__name__)

QUANTIZATIONS = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
LOW_BIT = ("q5_1", "q5_0", "q4_1", "q4_0")  # these keep the embedding and output matrices at q8_0


@dataclass(frozen=True)
class ArchSpec:
    """How one transformers model type maps onto a llama.cpp architecture."""

    gguf_arch: str
    interleave_rope: bool  # llama.cpp's Llama graph rotates adjacent pairs; Qwen's (NEOX) rotates halves, as HF does


ARCHS = {"llama": ArchSpec("llama", True), "mistral": ArchSpec("llama", True), "qwen2": ArchSpec("qwen2", False),
         "qwen3": ArchSpec("qwen3", False)}


def arch_spec(config) -> ArchSpec:
    """The llama.cpp architecture for this config, or a refusal naming what is not supported.

    Raises:
        TuneforgeError: naming the model_type or the config setting (rope_scaling, attention_bias, ...) that the
            writer does not carry into GGUF.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise TuneforgeError(f"export_format gguf writes the Llama family ({', '.join(sorted(ARCHS))}); this model is "
                             f"`{model_type}`, whose tensor layout and metadata the GGUF writer does not know; use export_format: hf "
                             f"and llama.cpp's convert_hf_to_gguf.py")
    problems = []
    rope = getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in (None, "default"):
        problems.append(f"rope_scaling `{rope_type}` (long-context RoPE scaling) is not written to GGUF yet")
    if model_type in ("llama", "mistral") and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        problems.append("attention_bias/mlp_bias: Llama-architecture GGUF readers ignore these biases")
    if getattr(config, "use_sliding_window", False):
        problems.append("use_sliding_window: sliding-window attention is not written to GGUF")
    if problems:
        raise TuneforgeError(f"export_format gguf cannot write this `{model_type}` model: {'; '.join(problems)}; use export_format: hf")
    return ARCHS[model_type]


def interleave_rotary_rows(weight, n_heads: int):
    """Per head, reorder the output rows [first half | second half] to [h0, s0, h1, s1, ...]: transformers rotates
    element i with element i + d/2, llama.cpp's Llama graph rotates 2i with 2i + 1."""
    rows = weight.shape[0]
    head_dim = rows // n_heads
    rest = weight.shape[1:]
    return weight.reshape(n_heads, 2, head_dim // 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def _tensor_type(gguf_name: str, array, quantization: str):
    """The GGML type a tensor is written in, and the reason when it is not the requested one."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if array.ndim == 1 or quantization == "f32":
        return GGMLQuantizationType.F32, None
    wanted = quantization
    if quantization in LOW_BIT and gguf_name in ("token_embd.weight", "output.weight"):
        wanted = "q8_0"
    qtype = GGMLQuantizationType[wanted.upper()]
    block = GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block:
        return GGMLQuantizationType.F16, f"rows of {array.shape[-1]} are not a multiple of {block}"
    return qtype, None


def _encode(array, qtype):
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    if qtype == GGMLQuantizationType.F32:
        return array.astype(np.float32)
    if qtype == GGMLQuantizationType.F16:
        return array.astype(np.float16)
    return quants.quantize(array.astype(np.float32), qtype)


def gguf_tensors(model, spec: ArchSpec, quantization: str):
    """Yield (gguf name, encoded array, GGML type) for every weight of the model, in state-dict order.

    Raises:
        TuneforgeError: a weight that has no llama.cpp name in this architecture (naming it).
    """
    import gguf
    import torch

    cfg = model.config
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == spec.gguf_arch)
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    tied = getattr(cfg, "tie_word_embeddings", False)
    fallbacks = {}
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        base, _, suffix = hf_name.rpartition(".")
        gguf_base = names.get_name(base)
        if gguf_base is None:
            raise TuneforgeError(f"export_format gguf: the weight `{hf_name}` has no llama.cpp name in the `{spec.gguf_arch}` "
                                 f"architecture, so this model cannot be written as GGUF; use export_format: hf")
        name = f"{gguf_base}.{suffix}"
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if spec.interleave_rope and base.endswith(("self_attn.q_proj", "self_attn.k_proj")):
            heads = cfg.num_attention_heads if base.endswith("q_proj") else cfg.num_key_value_heads
            array = interleave_rotary_rows(array, heads)
        qtype, why = _tensor_type(name, array, quantization)
        if why:
            fallbacks[name] = why
        yield name, _encode(array, qtype), qtype
    if fallbacks:
        log.info("written as f16 instead of %s: %s", quantization, ", ".join(f"{n} ({w})" for n, w in fallbacks.items()))


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _model_metadata(writer, cfg, quantization: str, name: str) -> None:
    from gguf import GGML_QUANT_VERSION, LlamaFileType

    writer.add_name(name)
    writer.add_file_type(int({"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16}.get(
        quantization, getattr(LlamaFileType, f"MOSTLY_{quantization.upper()}", LlamaFileType.MOSTLY_F16))))
    if quantization not in ("f32", "f16", "bf16"):
        writer.add_quantization_version(GGML_QUANT_VERSION)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    writer.add_rope_freq_base(float(_rope_theta(cfg)))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    head_dim = _head_dim(cfg)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)


def _rope_theta(cfg) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    return params.get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0


def _sampling_metadata(writer, generation) -> None:
    """Chat settings (tuneforge's GenerationSection) as llama.cpp's default sampling parameters."""
    if generation is None:
        return
    writer.add_sampling_temp(float(generation.temperature))
    writer.add_sampling_top_p(float(generation.top_p))
    writer.add_sampling_top_k(int(generation.top_k))
    writer.add_sampling_penalty_repeat(float(generation.repetition_penalty))


def _add_kv(writer, key: str, value) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, value)


def write_gguf(model, tokenizer, path: str, quantization: str = "f16", *, generation=None, pre_tokenizer: str | None = None,
               name: str = "tuneforge export") -> dict:
    """Write `model` (a merged, unquantized transformers model) and its tokenizer as one GGUF file at `path`.

    Args:
        quantization: one of QUANTIZATIONS; 1-D tensors stay f32, low-bit types keep embeddings/output at q8_0.
        generation: a GenerationSection whose sampling settings go into `general.sampling.*`.
        pre_tokenizer: llama.cpp's pre-tokenizer name when the source says it (a GGUF-loaded base).

    Returns:
        a summary: architecture, tensor count and the GGML type of every tensor.

    Raises:
        TuneforgeError: an unsupported architecture, config setting, weight or tokenizer (see arch_spec, vocab_metadata).
    """
    import gguf

    from tuneforge.export.gguf_vocab import vocab_metadata

    if quantization not in QUANTIZATIONS:
        raise TuneforgeError(f"gguf_quantization must be one of {', '.join(QUANTIZATIONS)} (got `{quantization}`)")
    spec = arch_spec(model.config)
    vocab = vocab_metadata(tokenizer, model.get_input_embeddings().weight.shape[0], pre_tokenizer)
    writer = gguf.GGUFWriter(path, spec.gguf_arch, use_temp_file=True)
    types = {}
    try:
        _model_metadata(writer, model.config, quantization, name)
        _sampling_metadata(writer, generation)
        for key, value in vocab.items():
            _add_kv(writer, key, value)
        for tensor_name, array, qtype in gguf_tensors(model, spec, quantization):
            writer.add_tensor(tensor_name, array, raw_dtype=qtype)
            types[tensor_name] = qtype.name
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return {"architecture": spec.gguf_arch, "quantization": quantization, "tensors": len(types), "tensor_types": types}
