"""`torch_dtype: auto` follows the hardware: bf16 for LoRA on a CPU with fast bf16 and a wide enough model, fp32
elsewhere, and the resolved config says why."""

import json
import logging

import pytest

from tuneforge import config, hardware, precision


@pytest.fixture
def cpu(monkeypatch):
    """A CPU-only machine whose bf16 flags the test sets."""
    hardware.gpu_present.cache_clear()
    monkeypatch.setattr(hardware, "gpu_present", lambda: False)

    def set_flags(*flags):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", *flags}))
    return set_flags


def _model_dir(tmp_path, hidden):
    folder = tmp_path / f"h{hidden}"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 128, "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}))
    return str(folder)


def _resolved(tmp_path, hidden, *extra):
    cfg = config.load(None, [f"model_name_or_path={_model_dir(tmp_path, hidden)}", f"output_dir={tmp_path / 'out'}", *extra])
    return config.resolve(cfg)


def test_with_bf16_auto_off_lora_stays_fp32_and_names_the_faster_opt_in(cpu, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(precision, "BF16_AUTO", False)
    cpu("amx_bf16", "avx512_bf16")
    with caplog.at_level(logging.INFO, logger="tuneforge.config"):
        cfg = _resolved(tmp_path, 576, "finetuning_type=lora")
    assert cfg.model.torch_dtype == "float32"
    (why,) = [w for key, _, _, w in cfg.changes if key == "torch_dtype"]
    assert "amx_bf16, avx512_bf16" in why and "torch_dtype: bfloat16" in why and "opt in" in why
    lines = [r.getMessage() for r in caplog.records if "torch_dtype" in r.getMessage()]
    assert lines == [f"resolved torch_dtype: float32 ({why})"]


def test_lora_on_a_fast_bf16_cpu_resolves_to_bf16_and_logs_why(cpu, tmp_path, caplog):
    assert precision.BF16_AUTO  # the default
    cpu("amx_bf16", "avx512_bf16")
    with caplog.at_level(logging.INFO, logger="tuneforge.config"):
        cfg = _resolved(tmp_path, 576, "finetuning_type=lora")
    assert cfg.model.torch_dtype == "bfloat16"
    (why,) = [w for key, _, _, w in cfg.changes if key == "torch_dtype"]
    assert why.startswith("auto -> bfloat16: CPU has amx_bf16, avx512_bf16")
    lines = [r.getMessage() for r in caplog.records if "torch_dtype" in r.getMessage()]
    assert lines == [f"resolved torch_dtype: bfloat16 ({why})"]


def test_without_bf16_instructions_lora_stays_fp32_and_says_so(cpu, tmp_path):
    cpu()
    cfg = _resolved(tmp_path, 576, "finetuning_type=lora")
    assert cfg.model.torch_dtype == "float32"
    (why,) = [w for key, _, _, w in cfg.changes if key == "torch_dtype"]
    assert "neither amx_bf16 nor avx512_bf16" in why


@pytest.mark.parametrize("extra, reason", [
    (["finetuning_type=full"], "full fine-tuning keeps fp32"),
    (["finetuning_type=lora", "bf16=true"], "autocast over fp32 weights"),
    (["finetuning_type=lora", "use_dora=true"], "DoRA and lora_dropout"),
    (["finetuning_type=lora", "lora_dropout=0.1"], "DoRA and lora_dropout"),
    (["finetuning_type=lora", "stage=dpo"], "stage dpo keeps fp32"),
    (["finetuning_type=lora", "bf16=false"], "the config says bf16: false"),  # LLaMA-Factory configs write it
])
def test_fast_bf16_cpu_keeps_fp32_where_bf16_was_not_measured_faster(cpu, tmp_path, extra, reason):
    cpu("avx512_bf16")
    cfg = _resolved(tmp_path, 576, *extra)
    assert cfg.model.torch_dtype == "float32"
    (why,) = [w for key, _, _, w in cfg.changes if key == "torch_dtype"]
    assert why.startswith("auto: CPU has avx512_bf16, but") and reason in why


def test_tiny_models_stay_fp32_on_a_fast_bf16_cpu(cpu, tmp_path, monkeypatch):
    """Test models (hidden 32-256) keep the fp32 behaviour the exact-equality tests assume."""
    monkeypatch.setattr(precision, "BF16_AUTO", True)
    cpu("amx_bf16")
    cfg = _resolved(tmp_path, 256, "finetuning_type=lora")
    assert cfg.model.torch_dtype == "float32"
    assert f"hidden 256 < {precision.MIN_BF16_HIDDEN}" in dict((k, w) for k, _, _, w in cfg.changes)["torch_dtype"]


def test_a_pinned_dtype_is_left_alone(cpu, tmp_path):
    cpu("amx_bf16")
    cfg = _resolved(tmp_path, 576, "finetuning_type=lora", "torch_dtype=float32")
    assert cfg.model.torch_dtype == "float32" and "torch_dtype" not in [k for k, *_ in cfg.changes]


def test_gpu_follows_the_bf16_flag(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware, "gpu_present", lambda: True)
    assert _resolved(tmp_path, 576, "finetuning_type=lora", "bf16=true").model.torch_dtype == "bfloat16"
