"""The fused LoRA forward over a bf16 base with fp32 adapters: peft's outputs and adapter gradients within bf16
rounding, the gradients land on the fp32 adapters, and the rank-r part no longer drags activations to fp32."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tuneforge.methods import lora_forward

# bf16 keeps 8 significant bits (relative rounding 2^-8 ~ 0.4%); a whole loss/gradient goes through ~20 roundings
# (two layers of matmuls, norms and softmax), so whole-tensor relative differences of ~1-2% are bf16 noise.
BF16_REL = 3e-2


def _model(dtype):
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))
    model = get_peft_model(base.to(dtype), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(2)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # peft starts B at zero; make the adapter matter
    return model


def _run(model, x):
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return loss.detach().float(), grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_adapters_stay_fp32_over_a_bf16_base():
    model = _model(torch.bfloat16)
    dtypes = {p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert dtypes == {torch.float32}  # peft's autocast_adapter_dtype; the fused path relies on it
    assert model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16


def test_fused_bf16_path_matches_peft_within_bf16_rounding(monkeypatch):
    x = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(3))
    ref32_loss, ref32 = _run(_model(torch.float32), x)
    model = _model(torch.bfloat16)
    peft_loss, peft = _run(model, x)
    assert lora_forward.fuse(model) == 2 * 7
    calls = []
    real = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: (calls.append(a[1].dtype), real(*a, **k))[1])
    loss, fused = _run(model, x)
    assert calls == [torch.bfloat16] * 14  # every adapted linear took the fused path, in bf16
    assert abs(loss - peft_loss) <= BF16_REL * abs(peft_loss)
    for name, g in peft.items():
        assert fused[name].dtype == torch.float32
        assert _rel(fused[name], g) < BF16_REL, name
        # no further from the fp32 model than peft's own bf16 forward is, give or take bf16 noise
        assert _rel(fused[name], ref32[name]) < 2 * _rel(g, ref32[name]) + BF16_REL / 2, name


def test_fused_bf16_path_trains_the_fp32_adapters():
    model = _model(torch.bfloat16)
    lora_forward.fuse(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(4))
    first = None
    for _ in range(8):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        first = first if first is not None else loss.item()
    assert loss.item() < first - 0.1


@pytest.mark.parametrize("adapter_dtype", [torch.float16, torch.float64])
def test_other_mixed_dtypes_use_peft_forward(adapter_dtype, monkeypatch):
    model = _model(torch.bfloat16)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.to(adapter_dtype)
    lora_forward.fuse(model)
    calls = []
    real = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    with torch.no_grad():
        model(input_ids=torch.randint(0, 128, (1, 8)))
    assert calls == []
