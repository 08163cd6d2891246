"""The fused LoRA forward over bitsandbytes 4-bit and 8-bit bases: peft's losses and gradients, nothing weight-sized
held between forward and backward, gradient checkpointing, and bitsandbytes' own forward outside training."""

import ctypes
import gc

import pytest
import torch

pytest.importorskip("bitsandbytes")
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

from tuneforge.methods import lora_forward, qlora_forward  # noqa: E402
from tuneforge.train import allocator  # noqa: E402

from conftest import make_model_dir  # noqa: E402

QUANT = {
    "nf4+dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False),
    "fp4+dq": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=False),
    "8bit": dict(load_in_8bit=True),
}
LINEARS = 7  # q, k, v, o, gate, up, down per layer


def _model(folder, quant: str, checkpointing: bool = False):
    kw = dict(QUANT[quant])
    if kw.get("load_in_4bit"):
        kw["bnb_4bit_compute_dtype"] = torch.float32
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, quantization_config=BitsAndBytesConfig(**kw))
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=checkpointing,
                                           gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # peft starts B at zero; make the adapter matter
    return model.train()


def _run(model, x):
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _count_fused(monkeypatch):
    calls = []
    real = qlora_forward.DequantLinearAdd.apply
    monkeypatch.setattr(qlora_forward.DequantLinearAdd, "apply", lambda *a: (calls.append(1), real(*a))[1])
    return calls


def _assert_same(loss, grads, ref_loss, ref_grads):
    # the same values computed in another order: fp32 rounding only
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("quant", list(QUANT))
def test_fused_quantized_forward_matches_bitsandbytes(wide_model_dir, quant, monkeypatch):
    model = _model(wide_model_dir, quant)
    x = torch.randint(0, 100, (2, 16))
    ref_loss, ref_grads = _run(model, x)
    assert lora_forward.fuse(model) == 6 * LINEARS
    calls = _count_fused(monkeypatch)
    loss, grads = _run(model, x)
    assert len(calls) == 6 * LINEARS  # every adapted linear took the dequantizing path
    _assert_same(loss, grads, ref_loss, ref_grads)


@pytest.mark.parametrize("quant", ["nf4+dq", "8bit"])
def test_gradient_checkpointing_recomputes_through_it(wide_model_dir, quant, monkeypatch):
    x = torch.randint(0, 100, (2, 16))
    plain = _model(wide_model_dir, quant)
    lora_forward.fuse(plain)
    ref_loss, ref_grads = _run(plain, x)
    model = _model(wide_model_dir, quant, checkpointing=True)
    assert model.base_model.model.is_gradient_checkpointing
    lora_forward.fuse(model)
    calls = _count_fused(monkeypatch)
    loss, grads = _run(model, x)
    # forward, then the recompute in backward, which stops after the last op that saves something: the down
    # projection's adapter, so its frozen matmul is not recomputed (see lora_forward)
    assert len(calls) == 6 * LINEARS + 6 * (LINEARS - 1)
    _assert_same(loss, grads, ref_loss, ref_grads)


def test_no_saved_tensor_is_weight_sized(wide_model_dir):
    """Every tensor autograd saves in the forward is activation-sized; the quantized weights stay 4-bit."""
    model = _model(wide_model_dir, "nf4+dq")
    lora_forward.fuse(model)
    weights = {m.base_layer.weight.quant_state.shape.numel() for m in model.modules() if hasattr(m, "base_layer")}
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    x = torch.randint(0, 100, (1, 2))  # 2 tokens: activations far smaller than any weight
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=x, labels=x).loss
    loss.backward()
    activations = set(saved) - {t for t in saved if t % model.config.vocab_size == 0}  # logits aside
    assert saved and not activations & weights and max(activations) <= max(weights) / 16


def _rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS"))


def _held_between_forward_and_backward(folder, quant: str) -> int:
    model = _model(folder, quant)
    lora_forward.fuse(model)
    x = torch.randint(0, 100, (1, 4))
    _run(model, x)  # warm up: lazily built state
    gc.collect()
    before = _rss()
    loss = model(input_ids=x, labels=x).loss
    held = _rss() - before
    loss.backward()
    return held


@pytest.mark.skipif(allocator.active() != "glibc", reason="reads RSS with glibc's mmap threshold pinned")
@pytest.mark.parametrize("quant", ["nf4+dq", "8bit"])
def test_memory_held_does_not_grow_with_the_weights(tmp_path, quant):
    """Between forward and backward the process holds activations only: a model with 4x the layers (4 x ~1.8M
    fp32 weights = 28 MiB more of full-precision weights) holds about the same."""
    # blocks over 64 KiB are mmapped and unmapped on free, so RSS follows the live tensors
    ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    small = make_model_dir(tmp_path / "l2", layers=2, hidden=256, intermediate=2048)
    large = make_model_dir(tmp_path / "l8", layers=8, hidden=256, intermediate=2048)
    layer_fp32 = (2 * 256 * 256 + 2 * 256 * 128 + 3 * 256 * 2048) * 4
    held_small = _held_between_forward_and_backward(small, quant)
    held_large = _held_between_forward_and_backward(large, quant)
    assert held_large - held_small < layer_fp32 / 4, (held_small, held_large, layer_fp32)
    assert held_large < layer_fp32


def test_inference_keeps_bitsandbytes_forward(wide_model_dir, monkeypatch):
    model = _model(wide_model_dir, "8bit")
    lora_forward.fuse(model)
    calls = _count_fused(monkeypatch)
    x = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        model(input_ids=x)
    model.eval()
    model(input_ids=x)
    assert calls == []
    lora_forward.unfuse(model)
    assert not any("forward" in vars(m) for m in model.modules())
