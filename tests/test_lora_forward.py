"""The fused LoRA forward gives peft's outputs and gradients, and leaves every other case to peft."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tuneforge.methods import lora_forward


def _model(**lora):
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **lora))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # peft starts B at zero; make the adapter matter
    return model


def _run(model, x):
    torch.manual_seed(1)  # same dropout mask in both runs
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return loss.detach(), grads


def _count_addmm(monkeypatch):
    calls = []
    real = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    return calls


@pytest.mark.parametrize("lora", [{}, {"use_rslora": True}])
def test_fused_forward_matches_peft(lora, monkeypatch):
    model = _model(**lora)
    x = torch.randint(0, 64, (2, 12))
    ref_loss, ref_grads = _run(model, x)
    assert lora_forward.fuse(model) == 2 * 7
    calls = _count_addmm(monkeypatch)
    loss, grads = _run(model, x)
    assert len(calls) == 2 * 7  # every adapted linear took the fused path
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("lora", [{"lora_dropout": 0.1}, {"use_dora": True}])
def test_other_cases_use_peft_forward(lora, monkeypatch):
    model = _model(**lora)
    x = torch.randint(0, 64, (2, 12))
    ref_loss, _ = _run(model, x)
    lora_forward.fuse(model)
    calls = _count_addmm(monkeypatch)
    loss, _ = _run(model, x)
    assert calls == [] and torch.equal(loss, ref_loss)


def test_disabled_adapter_and_unfuse(monkeypatch):
    model = _model()
    x = torch.randint(0, 64, (1, 8))
    lora_forward.fuse(model)
    calls = _count_addmm(monkeypatch)
    with model.disable_adapter(), torch.no_grad():
        off = model(input_ids=x).logits
    assert calls == []
    with torch.no_grad():
        on = model(input_ids=x).logits
    assert len(calls) == 14 and not torch.allclose(on, off)
    lora_forward.unfuse(model)
    calls.clear()
    with torch.no_grad():
        again = model(input_ids=x).logits
    assert calls == [] and torch.allclose(again, on, atol=1e-6)


def test_biased_base_layers_match_peft(monkeypatch):
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True))
    for name, p in base.named_parameters():
        if name.endswith(".bias"):
            torch.nn.init.normal_(p, std=0.1)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    x = torch.randint(0, 64, (2, 12))
    ref_loss, ref_grads = _run(model, x)
    lora_forward.fuse(model)
    calls = _count_addmm(monkeypatch)
    loss, grads = _run(model, x)
    assert len(calls) == 2 * 2 * 7  # the bias enters the adapter's addmm, the adapter the frozen one's
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-5)


def test_checkpointed_recompute_skips_the_down_projections_frozen_matmul(monkeypatch):
    """The frozen matmul saves nothing, so non-reentrant checkpointing stops its recompute before the last one of a
    layer (down_proj): per step, down_proj's frozen matmul runs once, every other linear's twice."""
    model = _model()
    x = torch.randint(0, 64, (2, 12))
    ref_loss, ref_grads = _run(model, x)
    lora_forward.fuse(model)
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    names = {id(m.weight): n.split(".")[-2] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith("base_layer")}
    runs = []
    real = lora_forward._FrozenLinearAdd.forward
    monkeypatch.setattr(lora_forward._FrozenLinearAdd, "forward",
                        staticmethod(lambda ctx, add, x, w: (runs.append(names[id(w)]), real(ctx, add, x, w))[1]))
    loss, grads = _run(model, x)
    count = {n: runs.count(n) for n in set(runs)}
    assert count == {"q_proj": 4, "k_proj": 4, "v_proj": 4, "o_proj": 4, "gate_proj": 4, "up_proj": 4, "down_proj": 2}
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-5)
