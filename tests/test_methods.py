"""Each method trains exactly the parameters it should; the registry refuses bad registrations."""

import pytest
import torch

from tuneforge import TuneforgeError, config, methods
from tuneforge.methods.registry import register_method
from tuneforge.models.arch import count_parameters


def build(tiny_model_dir, **kw):
    from transformers import AutoModelForCausalLM

    cfg = config.load(None, {"output_dir": "o", **kw})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return methods.get(cfg.method.finetuning_type).apply(model, cfg), cfg


def one_step(model):
    """One AdamW step on a fixed batch; returns {name: (before, after)} for every parameter."""
    torch.manual_seed(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(5, 300, (2, 12))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    return {n: (before[n], p.detach()) for n, p in model.named_parameters()}


def changed(states):
    return {n for n, (a, b) in states.items() if not torch.equal(a, b)}


def test_full_trains_every_parameter(tiny_model_dir):
    model, _ = build(tiny_model_dir, finetuning_type="full")
    trainable, total = count_parameters(model)
    assert trainable == total
    assert changed(one_step(model)) == {n for n, _ in model.named_parameters()}


def test_freeze_trains_only_the_last_layer(tiny_model_dir):
    model, _ = build(tiny_model_dir, finetuning_type="freeze", freeze_trainable_layers=1)
    states = one_step(model)
    assert changed(states) == {n for n in states if n.startswith("model.layers.1.")}
    assert changed(states)  # something trained


def test_freeze_negative_count_trains_the_first_layers(tiny_model_dir):
    model, _ = build(tiny_model_dir, finetuning_type="freeze", freeze_trainable_layers=-1)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.named_parameters() if n.startswith("model.layers.0.")}


def test_freeze_named_modules_and_extra_modules(tiny_model_dir):
    model, _ = build(tiny_model_dir, finetuning_type="freeze", freeze_trainable_layers=2,
                     freeze_trainable_modules="mlp", freeze_extra_modules="embed_tokens,norm")
    trained = changed(one_step(model))
    expected = {n for n, _ in model.named_parameters()
                if (n.startswith("model.layers.") and ".mlp." in n) or n in ("model.embed_tokens.weight", "model.norm.weight")}
    assert trained == expected


def test_freeze_unknown_module_names_what_exists(tiny_model_dir):
    with pytest.raises(TuneforgeError, match="lacks: mpl.*mlp"):
        build(tiny_model_dir, finetuning_type="freeze", freeze_trainable_modules="mpl")


def _linear_shapes(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return {n: (m.in_features, m.out_features) for n, m in base.named_modules()
            if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}


@pytest.mark.parametrize("rank", [4, 8])
def test_lora_all_adds_r_times_d_plus_k_per_linear_layer(tiny_model_dir, rank):
    model, _ = build(tiny_model_dir, finetuning_type="lora", lora_rank=rank, lora_target="all")
    expected = sum(rank * (d + k) for d, k in _linear_shapes(tiny_model_dir).values())
    assert count_parameters(model)[0] == expected


def test_lora_named_targets_only(tiny_model_dir):
    model, _ = build(tiny_model_dir, finetuning_type="lora", lora_rank=2, lora_target="q_proj,v_proj")
    shapes = _linear_shapes(tiny_model_dir)
    assert count_parameters(model)[0] == sum(2 * (d + k) for n, (d, k) in shapes.items() if n.endswith(("q_proj", "v_proj")))


def test_lora_trains_adapters_and_leaves_the_base_bit_identical(tiny_model_dir):
    model, _ = build(tiny_model_dir, finetuning_type="lora", lora_rank=4)
    states = one_step(model)
    trained = changed(states)
    assert trained and all("lora_" in n for n in trained)
    assert all(torch.equal(a, b) for n, (a, b) in states.items() if "lora_" not in n)
    # both A and B of every adapter moved (B starts at zero, A moves from the second step on in plain SGD; AdamW moves both)
    assert {n for n in trained if "lora_B" in n}


def test_lora_unknown_target_names_the_available_layers(tiny_model_dir):
    with pytest.raises(TuneforgeError, match="lora_target names layers this model lacks: qproj.*q_proj"):
        build(tiny_model_dir, finetuning_type="lora", lora_target="qproj")


def test_lora_alpha_defaults_to_twice_the_rank(tiny_model_dir):
    model, _ = build(tiny_model_dir, finetuning_type="lora", lora_rank=4)
    assert model.peft_config["default"].lora_alpha == 8


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_every_method_trains_something_and_its_section_round_trips(tiny_model_dir, name):
    import dataclasses

    import yaml

    model, cfg = build(tiny_model_dir, finetuning_type=name)
    assert changed(one_step(model))
    section = cfg.method_section()
    assert dataclasses.asdict(type(section)(**yaml.safe_load(yaml.safe_dump(dataclasses.asdict(section))))) == dataclasses.asdict(section)


def test_registry_refuses_bad_names_and_duplicates():
    with pytest.raises(ValueError, match="`LoRA2` must be lowercase"):
        register_method("LoRA2", None, lambda m, c: m)
    with pytest.raises(ValueError, match="`lora` is already registered"):
        register_method("lora", None, lambda m, c: m)
