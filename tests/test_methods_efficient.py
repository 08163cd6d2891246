"""QLoRA, LoRA variants, GaLore, prefix/prompt tuning, 8-bit and paged optimizers, gradient checkpointing:
each trains what it claims and leaves the rest bit-identical."""

import logging
import os

import pytest
import torch

from tuneforge import config
from tuneforge.models.arch import count_parameters
from tuneforge import run


def make_cfg(model_dir, data_dir, tmp_path, **kw):
    base = {"model_name_or_path": model_dir, "dataset": "my_alpaca,my_chat", "dataset_dir": data_dir, "output_dir": str(tmp_path / "run"),
            "template": "chatml", "cutoff_len": 64, "per_device_train_batch_size": 4, "max_steps": 3, "logging_steps": 1,
            "learning_rate": 1e-2, "save_strategy": "no", "cache_dir": str(tmp_path / "cache"), "disable_tqdm": True}
    return config.load(None, {**base, **kw})


def trainer_for(model_dir, data_dir, tmp_path, **kw):
    trainer, _, _ = run.build(make_cfg(model_dir, data_dir, tmp_path, **kw))
    return trainer


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed_names(before, model):
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def linear_shapes(model_dir):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    return {n: (m.in_features, m.out_features) for n, m in base.named_modules()
            if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}


# ---------------------------------------------------------------- QLoRA

@pytest.mark.parametrize("bits, qtype, dq", [(4, "nf4", True), (4, "fp4", False), (8, "nf4", False)], ids=["nf4-dq", "fp4", "int8"])
def test_qlora_quantizes_the_base_and_trains_only_the_adapters(wide_model_dir, data_dir, tmp_path, bits, qtype, dq):
    import bitsandbytes as bnb

    trainer = trainer_for(wide_model_dir, data_dir, tmp_path, quantization_bit=bits, quantization_type=qtype,
                          double_quantization=dq, lora_rank=4)
    model = trainer.model
    wrapped = {n: m.base_layer for n, m in model.named_modules() if hasattr(m, "base_layer") and ".layers." in n}
    assert len(wrapped) == 6 * 7
    kind = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    assert all(isinstance(m, kind) for m in wrapped.values())
    if bits == 4:
        states = [m.weight.quant_state for m in wrapped.values()]
        assert {s.quant_type for s in states} == {qtype}
        assert all(m.weight.dtype == torch.uint8 for m in wrapped.values())
        assert {bool(s.nested) for s in states} == {dq}
    else:
        assert all(m.weight.dtype == torch.int8 for m in wrapped.values())
    assert count_parameters(model)[0] == sum(4 * (d + k) for d, k in linear_shapes(wide_model_dir).values())
    before = snapshot(model)
    trainer.train()
    changed = changed_names(before, model)
    assert changed and all("lora_" in n for n in changed)


def test_quantization_refused_for_full_fine_tuning():
    with pytest.raises(config.ConfigError, match="quantization_bit needs an adapter method"):
        config.load(None, {"output_dir": "o", "finetuning_type": "full", "quantization_bit": 4})


# ---------------------------------------------------------------- LoRA variants

def test_dora_adds_a_magnitude_per_output_feature(wide_model_dir, data_dir, tmp_path):
    trainer = trainer_for(wide_model_dir, data_dir, tmp_path, use_dora=True, lora_rank=4)
    shapes = linear_shapes(wide_model_dir).values()
    assert count_parameters(trainer.model)[0] == sum(4 * (d + k) + k for d, k in shapes)
    before = snapshot(trainer.model)
    trainer.train()
    changed = changed_names(before, trainer.model)
    assert any("magnitude" in n for n in changed) and all("lora_" in n for n in changed)


def test_rslora_scales_by_alpha_over_sqrt_rank(tiny_model_dir, data_dir, tmp_path):
    trainer = trainer_for(tiny_model_dir, data_dir, tmp_path, use_rslora=True, lora_rank=16, lora_alpha=8)
    q = trainer.model.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(8 / 16 ** 0.5)


def test_pissa_starts_at_the_base_model_and_saves_an_adapter_for_the_original_base(wide_model_dir, data_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(wide_model_dir, data_dir, tmp_path, pissa_init=True, pissa_iter=-1, lora_rank=4)
    prepared = run.build(cfg)
    trainer = prepared.trainer
    ids = torch.tensor([[5, 9, 23, 77, 101, 3]])
    base = AutoModelForCausalLM.from_pretrained(wide_model_dir).eval()
    with torch.no_grad():
        assert (trainer.model(input_ids=ids).logits - base(input_ids=ids).logits).abs().max() < 1e-4
    run.train_and_save(prepared)
    trainer.model.eval()
    with torch.no_grad():
        trained = trainer.model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(wide_model_dir), cfg.output.output_dir).eval()
        assert (reloaded(input_ids=ids).logits - trained).abs().max() < 1e-4
        assert (trained - base(input_ids=ids).logits).abs().max() > 1e-3
    assert not os.path.exists(os.path.join(cfg.output.output_dir, "pissa_init"))


def test_loraplus_gives_b_a_higher_learning_rate(tiny_model_dir, data_dir, tmp_path):
    trainer = trainer_for(tiny_model_dir, data_dir, tmp_path, loraplus_lr_ratio=16, learning_rate=1e-3)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    groups = trainer.optimizer.param_groups
    b_groups = [g for g in groups if all("lora_B" in names[id(p)] for p in g["params"])]
    a_groups = [g for g in groups if all("lora_A" in names[id(p)] for p in g["params"])]
    assert b_groups and a_groups
    assert b_groups[0]["lr"] == pytest.approx(16 * a_groups[0]["lr"])
    trainer.train()


# ---------------------------------------------------------------- GaLore

def test_galore_trains_every_weight_with_low_rank_optimizer_state(wide_model_dir, data_dir, tmp_path):
    trainer = trainer_for(wide_model_dir, data_dir, tmp_path, finetuning_type="galore", galore_rank=4, galore_update_interval=2,
                          learning_rate=1e-3)
    assert trainer.args.optim == "galore_adamw"
    before = snapshot(trainer.model)
    trainer.train()
    assert changed_names(before, trainer.model) == set(before)
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    q = trainer.model.model.layers[0].mlp.up_proj.weight
    st = opt.state[q]
    assert "projector" in st and st["exp_avg"].numel() < q.numel() and 4 in st["exp_avg"].shape
    emb = trainer.model.model.embed_tokens.weight
    assert opt.state[emb]["exp_avg"].shape == emb.shape  # not targeted: plain AdamW state


def test_llamafactory_use_galore_maps_to_the_galore_method():
    cfg = config.load(None, {"output_dir": "o", "finetuning_type": "full", "use_galore": True, "galore_rank": 8})
    assert cfg.method.finetuning_type == "galore" and cfg.method_section().galore_rank == 8
    with pytest.raises(config.ConfigError, match="use_galore: true trains all weights"):
        config.load(None, {"output_dir": "o", "finetuning_type": "lora", "use_galore": True})


def test_galore_8bit_is_refused_on_the_cpu():
    with pytest.raises(config.ConfigError, match="needs CUDA"):
        config.load(None, {"output_dir": "o", "finetuning_type": "galore", "optim": "galore_adamw_8bit"})


# ---------------------------------------------------------------- prefix and prompt tuning

@pytest.mark.parametrize("kind", ["prefix", "prompt"])
def test_prefix_and_prompt_tuning_train_only_virtual_tokens(tiny_model_dir, data_dir, tmp_path, kind):
    from transformers import AutoConfig

    trainer = trainer_for(tiny_model_dir, data_dir, tmp_path, finetuning_type=kind, num_virtual_tokens=5)
    c = AutoConfig.from_pretrained(tiny_model_dir)
    head_dim = c.hidden_size // c.num_attention_heads
    per_token = c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim if kind == "prefix" else c.hidden_size
    assert count_parameters(trainer.model)[0] == 5 * per_token
    before = snapshot(trainer.model)
    trainer.train()
    assert changed_names(before, trainer.model) == {n for n in before if "prompt_encoder" in n}


def test_prefix_refuses_packing():
    with pytest.raises(config.ConfigError, match="packing is not available with finetuning_type prefix"):
        config.load(None, {"output_dir": "o", "finetuning_type": "prefix", "packing": True})


# ---------------------------------------------------------------- optimizers

def _state_bytes_per_param(trainer, min_numel: int) -> float:
    """Optimizer-state bytes per decoder-layer parameter with at least `min_numel` elements (the Trainer keeps
    embeddings in 32-bit state for stability). bitsandbytes' `qmap` entries are its fixed 256-value code books
    (the same table for every tensor), not state."""
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    layer_params = {id(p) for p in trainer.model.model.layers.parameters()}
    big = [(p, st) for p, st in opt.state.items() if p.numel() >= min_numel and id(p) in layer_params]
    state = sum(t.numel() * t.element_size() for _, st in big for k, t in st.items()
                if torch.is_tensor(t) and t.dim() > 0 and not k.startswith("qmap"))
    return state / sum(p.numel() for p, _ in big)


def test_8bit_adamw_keeps_two_bytes_of_state_per_parameter(wide_model_dir, data_dir, tmp_path):
    per_param = {}
    for optim in ("adamw_torch", "adamw_bnb_8bit"):
        trainer = trainer_for(wide_model_dir, data_dir, tmp_path / optim, finetuning_type="full", optim=optim, max_steps=1)
        trainer.train()
        per_param[optim] = _state_bytes_per_param(trainer, 4096)  # bitsandbytes keeps smaller tensors in 32 bits
    assert per_param["adamw_torch"] == pytest.approx(8.0)
    assert 2.0 <= per_param["adamw_bnb_8bit"] < 2.1, per_param


@pytest.mark.parametrize("optim", ["paged_adamw_32bit", "paged_adamw_8bit"])
def test_paged_optimizers_say_what_they_fall_back_to_on_the_cpu(tiny_model_dir, data_dir, tmp_path, caplog, optim):
    with caplog.at_level(logging.WARNING):
        trainer = trainer_for(tiny_model_dir, data_dir, tmp_path, optim=optim, max_steps=1)
    assert f"optim {optim} pages optimizer state through CUDA unified memory" in caplog.text
    before = snapshot(trainer.model)
    trainer.train()
    assert changed_names(before, trainer.model)


# ---------------------------------------------------------------- gradient checkpointing

GC_METHODS = {
    "lora": {}, "qlora": {"quantization_bit": 4}, "dora": {"use_dora": True}, "full": {"finetuning_type": "full"},
    "freeze": {"finetuning_type": "freeze", "freeze_trainable_layers": 2}, "lisa": {"finetuning_type": "lisa", "lisa_layers": 2},
    "galore": {"finetuning_type": "galore", "galore_rank": 4}, "prompt": {"finetuning_type": "prompt", "num_virtual_tokens": 4},
}


@pytest.mark.parametrize("name", sorted(GC_METHODS))
def test_gradient_checkpointing_gives_the_same_loss_and_trains(wide_model_dir, data_dir, tmp_path, name):
    losses, changed = {}, {}
    for gc in (False, True):
        trainer = trainer_for(wide_model_dir, data_dir, tmp_path / str(gc), gradient_checkpointing=gc, max_steps=2,
                              learning_rate=1e-3, **GC_METHODS[name])
        before = snapshot(trainer.model)
        trainer.train()
        losses[gc] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        changed[gc] = changed_names(before, trainer.model)
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)
    assert changed[True] and changed[True] == changed[False]
