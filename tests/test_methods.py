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


def train_steps(model, steps=1, weight_decay=0.01):
    """`steps` AdamW steps on a fixed batch; returns {name: (before, after)} for every parameter. With weight_decay=0
    a parameter moves only where its gradient is non-zero (decay alone would move every trainable tensor)."""
    torch.manual_seed(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(5, 300, (2, 12))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    return {n: (before[n], p.detach()) for n, p in model.named_parameters()}


def one_step(model):
    """One AdamW step on a fixed batch; returns {name: (before, after)} for every parameter."""
    return train_steps(model, 1)


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
    # B starts at zero, so A's first gradient is zero: A can only move on the second step, once B has. Without weight
    # decay a tensor moves only through its gradient, so an adapter whose A (or B) gets no gradient shows here.
    states = train_steps(model, steps=2, weight_decay=0.0)
    lora_a = {n for n in states if ".lora_A." in n}
    lora_b = {n for n in states if ".lora_B." in n}
    assert len(lora_a) == len(lora_b) == len(_linear_shapes(tiny_model_dir))  # lora_target=all: one A and one B per linear
    trained = changed(states)
    assert lora_a <= trained, f"lora_A that did not move: {sorted(lora_a - trained)}"
    assert lora_b <= trained, f"lora_B that did not move: {sorted(lora_b - trained)}"
    base = set(states) - lora_a - lora_b
    assert base and not trained & base, f"base weights that moved: {sorted(trained & base)}"
    assert all(torch.equal(*states[n]) for n in base)


def test_lora_unknown_target_names_the_available_layers(tiny_model_dir):
    with pytest.raises(TuneforgeError, match="lora_target names layers this model lacks: qproj.*q_proj"):
        build(tiny_model_dir, finetuning_type="lora", lora_target="qproj")


def test_lora_alpha_defaults_to_twice_the_rank(tiny_model_dir):
    model, _ = build(tiny_model_dir, finetuning_type="lora", lora_rank=4)
    assert model.peft_config["default"].lora_alpha == 8


# For every field of every method section: (the text a user writes in YAML, the value the section must then hold).
# Each value differs from the field's default, so a field that is dropped or reset on the way in or out shows.
WRITTEN = {
    "freeze_trainable_layers": ("-1", -1),
    "freeze_trainable_modules": ("mlp, self_attn", ["mlp", "self_attn"]),
    "freeze_extra_modules": ("[embed_tokens, norm]", ["embed_tokens", "norm"]),
    "galore_target": ("q_proj,v_proj", ["q_proj", "v_proj"]),
    "galore_rank": ("4", 4),
    "galore_update_interval": ("7", 7),
    "galore_scale": ("0.25", 0.25),
    "galore_layerwise": ("true", True),
    "lisa_layers": ("1", 1),
    "lisa_interval": ("3", 3),
    "lisa_train_embeddings": ("false", False),
    "lora_rank": ("3", 3),
    "lora_alpha": ("5", 5),
    "lora_dropout": ("0.1", 0.1),
    "lora_target": ("q_proj,v_proj", ["q_proj", "v_proj"]),
    "additional_target": ("[embed_tokens]", ["embed_tokens"]),
    "use_dora": ("true", True),
    "use_rslora": ("true", True),
    "pissa_init": ("true", True),
    "pissa_iter": ("-1", -1),
    "loraplus_lr_ratio": ("1.0e-1", 0.1),
    "num_virtual_tokens": ("7", 7),
    "prefix_projection": ("true", True),
}


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_every_method_trains_something_and_its_section_round_trips(tiny_model_dir, tmp_path, name):
    import dataclasses

    from tuneforge.config.registry import METHOD_SECTIONS

    model, cfg = build(tiny_model_dir, finetuning_type=name)
    assert changed(one_step(model))

    cls = METHOD_SECTIONS[name]  # the section the method registered
    fields = [f.name for f in dataclasses.fields(cls)]
    assert set(fields) <= set(WRITTEN), f"add {sorted(set(fields) - set(WRITTEN))} of `{name}` to WRITTEN"
    defaults = dataclasses.asdict(cls())
    assert all(defaults[k] != WRITTEN[k][1] for k in fields)  # otherwise a dropped value would go unnoticed
    path = tmp_path / "run.yaml"
    path.write_text(f"finetuning_type: {name}\n" + "".join(f"{k}: {WRITTEN[k][0]}\n" for k in fields))
    cfg = config.load(str(path), purpose="infer")
    section = cfg.method_section()
    assert type(section) is cls and cfg.method_section(name) is section
    assert {k: getattr(section, k) for k in fields} == {k: WRITTEN[k][1] for k in fields}
    flat = cfg.to_flat()
    assert flat["finetuning_type"] == name
    assert {k: flat.get(k, "<missing>") for k in fields} == {k: WRITTEN[k][1] for k in fields}


def test_registry_refuses_bad_names_and_duplicates():
    with pytest.raises(ValueError, match="`LoRA2` must be lowercase"):
        register_method("LoRA2", None, lambda m, c: m)
    with pytest.raises(ValueError, match="`lora` is already registered"):
        register_method("lora", None, lambda m, c: m)
