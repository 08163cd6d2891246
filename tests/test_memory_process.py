"""The whole-process terms of the estimate on the CPU: the baseline, the malloc's retention, the checkpoint's file pages
while loading and after, and which peak (load or train) the total reports."""

import json
import struct

import pytest

from tuneforge.memory import process
from tuneforge.memory.estimate import GIB, EstimateInput, estimate_shape
from tuneforge.memory.shapes import load_shape

SMOL = load_shape("smollm2-135m")


def _report(**kw):
    return estimate_shape(SMOL, EstimateInput(**{"finetuning_type": "lora", "batch": 4, "seq": 256, **kw}))


def test_the_malloc_changes_the_overhead_by_its_measured_retention_of_activations():
    by = {m: _report(malloc=m) for m in ("glibc", "glibc-tuned", "tcmalloc", "mimalloc")}
    acts = by["glibc"].activations
    for m, r in by.items():
        assert r.activations == acts and r.weights == by["glibc"].weights
        assert r.overhead - by["tcmalloc"].overhead == pytest.approx((process.RETENTION[m] - process.RETENTION["tcmalloc"]) * acts)
        assert r.process == process.BASELINE[m]
    assert by["glibc"].total > by["tcmalloc"].total  # glibc keeps the most of the freed activations (measured)


def test_an_unknown_malloc_is_counted_as_glibc():
    assert _report(malloc="snmalloc").total == _report(malloc="glibc").total


def test_the_total_is_the_whole_process_and_tensors_only_is_still_available():
    whole, tensors = _report(), _report(whole_process=False)
    assert whole.process > 0.4 * GIB and tensors.process == 0 and tensors.load == 0
    assert whole.total - tensors.total > 0.4 * GIB


def test_a_gpu_estimate_has_no_process_terms():
    r = _report(device="cuda")
    assert r.process == r.load == 0


def test_a_same_dtype_load_maps_the_file_as_the_weights_and_peaks_in_training():
    r = _report(checkpoint_dtype="float32")
    assert r.load == r.process + r.weights
    assert r.phase == "train" and r.total == r.train_peak


def test_a_converting_load_reads_the_whole_file_beside_the_weights():
    same, converted = _report(), _report(checkpoint_dtype="bfloat16")
    assert converted.load - same.load >= SMOL.total_params * 2  # the bf16 file's pages beside the fp32 weights
    assert converted.train_peak == same.train_peak


def test_a_quantized_base_over_a_same_dtype_file_keeps_nothing_mapped_while_training():
    """SmolLM2's converted GGUF folder is fp32: the loader copies the unconverted fp32 embedding off the mapped file
    (models.quantization.own_unquantized; measured RssFile 0.16 GiB while training, 0.49 before), so training costs the
    same as over a bf16 file; loading still reads every page."""
    kept, converted = _report(quantization_bit=4), _report(quantization_bit=4, checkpoint_dtype="bfloat16")
    assert kept.train_peak == converted.train_peak
    assert kept.load - kept.process - kept.weights >= SMOL.total_params * 4


def test_the_checkpoint_size_overrides_the_parameter_count():
    r = _report(quantization_bit=4, checkpoint_dtype="bfloat16", checkpoint_bytes=3 * GIB)
    assert r.phase == "load" and r.load >= r.process + r.weights + 3 * GIB


def test_malloc_key_tells_tuned_glibc_from_glibc():
    assert process.malloc_key("glibc", {}) == "glibc"
    assert process.malloc_key("glibc", {"MALLOC_TRIM_THRESHOLD_": "1"}) == "glibc-tuned"
    assert process.malloc_key("tcmalloc", {"MALLOC_TRIM_THRESHOLD_": "1"}) == "tcmalloc"
    assert process.malloc_key("glibc-tuned", {}) == "glibc-tuned"
    assert process.malloc_key("unknown", {}) == "glibc"


def _write_safetensors(path, tensors: dict[str, tuple[str, int]]):
    header, offset = {}, 0
    for name, (dtype, nbytes) in tensors.items():
        header[name] = {"dtype": dtype, "shape": [nbytes], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def test_checkpoint_of_reads_size_and_dominant_dtype_from_the_headers(tmp_path):
    _write_safetensors(tmp_path / "model-00001.safetensors", {"a": ("BF16", 4096), "b": ("F32", 1024)})
    _write_safetensors(tmp_path / "model-00002.safetensors", {"c": ("BF16", 2048)})
    ck = process.checkpoint_of(str(tmp_path))
    assert ck.dtype == "bfloat16"
    assert ck.nbytes == sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    assert process.checkpoint_of(str(tmp_path / "missing")) is None


def test_input_from_config_uses_the_planned_malloc_and_the_checkpoint(tiny_model_dir, monkeypatch):
    from tuneforge import config
    from tuneforge.memory import api

    monkeypatch.setattr(api.allocator, "planned", lambda choice="auto", env=None: "mimalloc")
    cfg = config.load(None, [f"model_name_or_path={tiny_model_dir}", "output_dir=/tmp/unused", "torch_dtype=float32"])
    x = api.input_from_config(cfg)
    ck = process.checkpoint_of(tiny_model_dir)
    assert x.malloc == "mimalloc"
    assert (x.checkpoint_bytes, x.checkpoint_dtype) == (ck.nbytes, ck.dtype)
