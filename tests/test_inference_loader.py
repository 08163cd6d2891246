"""Chat, the API and export load models through the training loader: torch_dtype, bitsandbytes quantization and
trust_remote_code apply; export merges into unquantized float32 weights whatever quantization_bit says."""

import logging

import pytest
import torch

from tuneforge import config
from tuneforge.infer import ChatEngine, GenerationSettings, load_for_inference
from tuneforge.models.quantization import is_quantized

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])


def infer_cfg(model_dir, **kw):
    return config.load(None, {"model_name_or_path": model_dir, "max_new_tokens": 4, "temperature": 0, **kw}, purpose="infer")


def float_dtypes(model):
    return {p.dtype for p in model.parameters() if p.is_floating_point()}


def reply(engine):
    return engine.chat([{"role": "user", "content": "hello"}], GenerationSettings(temperature=0, max_new_tokens=4))


def test_chat_engine_loads_in_the_configured_dtype(tiny_model_dir):
    engine = ChatEngine.from_config(infer_cfg(tiny_model_dir, torch_dtype="bfloat16"))
    assert float_dtypes(engine.model) == {torch.bfloat16}
    assert engine.model.config.use_cache and not engine.model.training
    assert reply(engine).completion_tokens > 0


def test_auto_dtype_is_float32_on_the_cpu(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    engine = ChatEngine.from_config(infer_cfg(tiny_model_dir, bf16=True))
    assert float_dtypes(engine.model) == {torch.float32}


def test_chat_engine_loads_quantized_with_quantization_bit(wide_model_dir):
    pytest.importorskip("bitsandbytes")
    engine = ChatEngine.from_config(infer_cfg(wide_model_dir, quantization_bit=4))
    assert is_quantized(engine.model)
    assert reply(engine).completion_tokens > 0


def test_demo_signature_still_loads_a_name_with_an_adapter(tiny_model_dir, tmp_path):
    from test_export import make_adapter

    adapter = make_adapter(tiny_model_dir, str(tmp_path / "adapter"), False)
    model, tok = load_for_inference(tiny_model_dir, adapter)
    assert "peft" in type(model).__module__ and float_dtypes(model) == {torch.float32}
    assert tok.chat_template


def make_adapter_on(model_dir, folder):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return folder


def test_export_of_a_qlora_run_merges_into_float32_weights(wide_model_dir, tmp_path, caplog):
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.export import export_model

    adapter = make_adapter_on(wide_model_dir, str(tmp_path / "adapter"))
    out = str(tmp_path / "merged")
    cfg = config.load(None, {"model_name_or_path": wide_model_dir, "adapter_name_or_path": adapter, "quantization_bit": 4,
                             "export_dir": out, "export_dtype": "float32"}, purpose="export")
    with caplog.at_level(logging.INFO, logger="tuneforge"):
        export_model(cfg)
    assert "unquantized in float32" in caplog.text
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not is_quantized(merged) and float_dtypes(merged) == {torch.float32}
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(wide_model_dir, dtype=torch.float32), adapter).eval()
    plain = AutoModelForCausalLM.from_pretrained(wide_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (merged(input_ids=IDS).logits - with_adapter(input_ids=IDS).logits).abs().max() < 1e-4
        assert (merged(input_ids=IDS).logits - plain(input_ids=IDS).logits).abs().max() > 1e-3


@pytest.fixture
def seen_kwargs(monkeypatch):
    """The keyword arguments every AutoModelForCausalLM / AutoTokenizer.from_pretrained call received."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen = {"model": [], "tokenizer": []}
    for key, cls in (("model", AutoModelForCausalLM), ("tokenizer", AutoTokenizer)):
        real = cls.from_pretrained

        def spy(*a, _real=real, _key=key, **kw):
            seen[_key].append(kw)
            return _real(*a, **kw)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return seen


def test_trust_remote_code_reaches_from_pretrained_in_chat(tiny_model_dir, seen_kwargs):
    ChatEngine.from_config(infer_cfg(tiny_model_dir, trust_remote_code=True))
    assert seen_kwargs["model"] and all(kw.get("trust_remote_code") is True for kw in seen_kwargs["model"])
    assert seen_kwargs["tokenizer"] and all(kw.get("trust_remote_code") is True for kw in seen_kwargs["tokenizer"])


def test_trust_remote_code_reaches_from_pretrained_in_export(tiny_model_dir, tmp_path, seen_kwargs):
    from tuneforge.export import export_model

    export_model(config.load(None, {"model_name_or_path": tiny_model_dir, "trust_remote_code": True,
                                    "export_dir": str(tmp_path / "out")}, purpose="export"))
    assert seen_kwargs["model"] and all(kw.get("trust_remote_code") is True for kw in seen_kwargs["model"])
    assert all(kw.get("dtype") == torch.float32 and "quantization_config" not in kw for kw in seen_kwargs["model"])
