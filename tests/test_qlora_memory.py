"""QLoRA's memory accounting: the estimator counts quantized bytes plus one dequantized linear, and the peak RSS a
run reports is its own program's (not the process image it was exec'd from)."""

import subprocess
import sys
import textwrap

from tuneforge.memory.estimate import GIB, EstimateInput, estimate_shape
from tuneforge.memory.shapes import ModelShape

LLAMA_3B = ModelShape.from_config(dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, vocab_size=128256,
                                       model_type="llama"))


def _report(**kw):
    """The showcase: its random weights are written in bf16 shards."""
    return estimate_shape(LLAMA_3B, EstimateInput(**{"finetuning_type": "lora", "batch": 1, "seq": 256, "checkpoint_dtype": "bfloat16", **kw}))


def test_quantized_base_costs_its_quantized_bytes_plus_one_linear():
    tensors = {"whole_process": False}  # the tensors alone (no process baseline, malloc retention or file pages)
    lora, q4, q8 = _report(**tensors), _report(quantization_bit=4, **tensors), _report(quantization_bit=8, **tensors)
    linears = LLAMA_3B.layers * LLAMA_3B.layer_linear_params
    # the linears go from 4 bytes to ~0.52 (NF4 + double quantization) or ~1; the embedding stays fp32
    assert 0.12 < (q4.weights - LLAMA_3B.embedding_params * 4) / (linears * 4) < 0.14
    assert 0.25 <= (q8.weights - LLAMA_3B.embedding_params * 4) / (linears * 4) < 0.26
    largest_linear = 8192 * 3072 * 4
    assert q4.activations - lora.activations == largest_linear == q8.activations - lora.activations
    assert q4.total < 6 * GIB < 13 * GIB < lora.total


def test_a_quantizing_load_from_bf16_shards_peaks_while_loading():
    """Measured on the 3B showcase: 9.65 GiB whole-process peak at load time (bf16 file pages + quantized weights),
    3.74 GiB anonymous while training."""
    q4 = _report(quantization_bit=4, gradient_checkpointing=True)
    file_bytes = LLAMA_3B.total_params * 2
    assert q4.phase == "load" and q4.total == q4.load
    assert q4.load - q4.process - q4.weights >= file_bytes  # every page of the checkpoint was read while loading
    assert q4.train_peak < q4.load - file_bytes / 2  # every tensor was converted: the file is unmapped once loaded


def test_peak_rss_is_this_programs_own():
    """A process that held 256 MiB and then exec'd (as `tuneforge train` re-executes itself under tcmalloc): ru_maxrss
    keeps the old image's peak, peak_rss_gib reports the new program's."""
    child = "import resource; from tuneforge.train.procstats import peak_rss_gib; " \
            "print(peak_rss_gib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)"
    parent = textwrap.dedent(f"""
        import os, sys
        block = bytearray(256 * 2**20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        del block
        os.execv(sys.executable, [sys.executable, "-c", {child!r}])
    """)
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True).stdout.split()
    own, inherited = float(out[0]), float(out[1])
    assert inherited > 0.25 > 0.2 > own


def test_a_quantizing_load_leaves_nothing_in_the_mapped_checkpoint(tmp_path):
    """The random folder is fp32 like the compute dtype: the embedding, norms and head load without conversion, which
    would keep the safetensors file mapped (every page the load read resident all run); the loader copies them off.
    The folder is this test's own: models other tests keep alive may map a shared fixture's file."""
    import gc
    import os

    import torch

    from conftest import make_model_dir
    from tuneforge import config
    from tuneforge.models.loader import load_model

    wide_model_dir = make_model_dir(tmp_path / "wide", layers=6, hidden=64, intermediate=256)

    cfg = config.from_flat({"model_name_or_path": wide_model_dir, "output_dir": "o", "quantization_bit": 4})
    model = load_model(wide_model_dir, cfg.model, torch.float32)
    gc.collect()
    checkpoint = os.path.realpath(os.path.join(wide_model_dir, "model.safetensors"))
    with open("/proc/self/maps") as fh:
        assert checkpoint not in fh.read()
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert type(model.model.layers[0].mlp.up_proj.weight).__name__ == "Params4bit"
