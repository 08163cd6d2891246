"""The estimator counts what each registered method really trains: every method's memory hook against the real
model with the method applied (defaults and the options that once never reached the estimator), measured tensor
bytes for those options, and methods the estimator does not know (an unknown report, skipped by --fit)."""

import dataclasses
import pathlib

import pytest
import torch

from tuneforge import config, methods
from tuneforge.memory import GIB, EstimateInput, describe, estimate_shape, load_shape
from tuneforge.memory.fit import search
from tuneforge.memory.footprint import ADAPTER, Footprint, Tensors, section
from tuneforge.methods.registry import register_method, unregister_method
from tuneforge.models.arch import count_parameters


def build(model_dir, **kw):
    """The model of `model_dir` with the method of `kw` applied, and the config."""
    from transformers import AutoModelForCausalLM

    cfg = config.load(None, {"output_dir": "o", "model_name_or_path": model_dir, **kw})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return methods.get(cfg.method.finetuning_type).apply(model, cfg), cfg


def predicted(model_dir, cfg, **overrides):
    from tuneforge.memory.api import input_from_config

    return estimate_shape(load_shape(model_dir), input_from_config(cfg, **overrides))


# every registered method with its defaults, then the options that used to be dropped on the way to the estimator
CASES = [{"finetuning_type": name} for name in sorted(methods.METHODS)] + [
    {"finetuning_type": "lora", "additional_target": "embed_tokens"},
    {"finetuning_type": "lora", "additional_target": "lm_head", "lora_target": "q_proj,v_proj"},
    {"finetuning_type": "lora", "additional_target": "norm"},  # peft matches name endings: every layer's norms too
    {"finetuning_type": "lora", "use_dora": True, "lora_rank": 4},
    {"finetuning_type": "freeze", "freeze_extra_modules": "embed_tokens,norm"},
    {"finetuning_type": "freeze", "freeze_extra_modules": "lm_head", "freeze_trainable_modules": "mlp"},
    {"finetuning_type": "freeze", "freeze_trainable_layers": -1},
    {"finetuning_type": "galore", "galore_target": "q_proj,v_proj"},
    {"finetuning_type": "lisa", "lisa_layers": 1, "lisa_train_embeddings": False},
    {"finetuning_type": "prefix", "prefix_projection": True},
    {"finetuning_type": "prefix", "num_virtual_tokens": 5},
    {"finetuning_type": "prompt", "num_virtual_tokens": 5},
]


def _id(case):
    return "-".join(f"{v}" for v in case.values())


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_estimated_trainable_parameters_equal_the_real_ones(wide_model_dir, case):
    from tuneforge.memory.api import input_from_config
    from tuneforge.memory.estimate import footprint
    from tuneforge.memory.footprint import COPY

    model, cfg = build(wide_model_dir, **case)
    report = predicted(wide_model_dir, cfg)
    trainable, total = count_parameters(model)
    assert report.known
    assert report.trainable_params == trainable
    # adapters and trainable copies are stored beside the base weights
    shape = load_shape(wide_model_dir)
    assert total == shape.total_params + footprint(shape, input_from_config(cfg)).values(ADAPTER, COPY)


def test_every_registered_method_is_counted():
    """A method added without a memory hook would make its estimate unknown: the shipped ones all have one."""
    assert {n for n, m in methods.METHODS.items() if m.memory is None} == set()


@pytest.mark.parametrize("case", [{"finetuning_type": "lora", "additional_target": "embed_tokens,lm_head"},
                                  {"finetuning_type": "freeze", "freeze_extra_modules": "embed_tokens"}], ids=_id)
def test_tied_embeddings_count_once(tmp_path_factory, case):
    from conftest import make_model_dir

    tied = make_model_dir(tmp_path_factory.mktemp("tied"), tie=True)
    model, cfg = build(tied, **case)
    assert predicted(tied, cfg).trainable_params == count_parameters(model)[0]


@pytest.mark.parametrize("method", [
    {"finetuning_type": "lora", "additional_target": "embed_tokens"},
    {"finetuning_type": "freeze", "freeze_extra_modules": "embed_tokens,norm"},
    {"finetuning_type": "galore", "galore_target": "q_proj,v_proj", "galore_rank": 4},
    {"finetuning_type": "prefix", "prefix_projection": True},
    {"finetuning_type": "lora", "use_dora": True},
], ids=_id)
def test_drifted_options_match_measured_tensor_bytes(wide_model_dir, tmp_path, method):
    """Weights, gradients and optimizer states after one optimizer step, measured tensor by tensor, against the
    estimate (the optimizer the Trainer would build: AdamW over the trainable parameters, GaLore's from its args)."""
    from transformers import Trainer, TrainingArguments

    from tuneforge.memory import tensor_bytes

    model, cfg = build(wide_model_dir, **method)
    report = predicted(wide_model_dir, cfg)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, report_to=[], use_cpu=True,
                             **methods.get(cfg.method.finetuning_type).training_args(cfg))
    opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    opt_kwargs.setdefault("params", [p for p in model.parameters() if p.requires_grad])
    optimizer = opt_cls(**opt_kwargs)
    torch.manual_seed(0)
    ids = torch.randint(5, 300, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    measured = tensor_bytes(model, optimizer)
    for key in ("weights", "gradients", "optimizer"):
        assert getattr(report, key) == pytest.approx(measured[key], rel=0.03, abs=2048), key


def test_galore_target_projects_only_the_named_linears():
    shape = load_shape("smollm2-135m")
    every = estimate_shape(shape, EstimateInput(finetuning_type="galore", options={"galore_rank": 8}))
    some = estimate_shape(shape, EstimateInput(finetuning_type="galore", options={"galore_rank": 8, "galore_target": ["q_proj", "v_proj"]}))
    assert some.trainable_params == every.trainable_params == shape.total_params
    # q (h x q_dim) and v (h x kv_dim) get projected states; the other five linears fall back to plain AdamW (2 x 4 B)
    r, h, q, kv = 8, shape.hidden, shape.q_dim, shape.kv_dim
    projected = sum(2 * r * max(h, o) * 4 + r * min(h, o) * 4 for o in (q, kv)) * shape.layers
    plain = (shape.total_params - (h * q + h * kv) * shape.layers) * 8
    assert some.optimizer == projected + plain
    assert some.optimizer > every.optimizer
    assert f"({2 * shape.layers} targeted)" in some.detail["optimizer"]


def test_options_come_from_the_method_section(tiny_model_dir):
    _, cfg = build(tiny_model_dir, finetuning_type="lora", lora_rank=16, additional_target="embed_tokens")
    from tuneforge.memory.api import input_from_config

    x = input_from_config(cfg)
    assert x.options == dataclasses.asdict(cfg.method_section())
    assert x.options["lora_rank"] == 16 and x.options["additional_target"] == ["embed_tokens"]
    _, full = build(tiny_model_dir, finetuning_type="full")
    assert input_from_config(full).options == {}


def test_options_are_checked_against_the_method_section():
    x = EstimateInput(finetuning_type="lora", options={"lora_rank": 2})
    assert x.options == {"lora_rank": 2}
    assert dataclasses.replace(x, batch=1).options == {"lora_rank": 2}
    with pytest.raises(ValueError, match="lisa_layers are not options of finetuning_type lora"):
        EstimateInput(finetuning_type="lora", options={"lisa_layers": 2})
    with pytest.raises(TypeError, match="batchh"):
        EstimateInput(finetuning_type="full", batchh=2)


def test_attention_seq_counts_probabilities_per_example():
    shape = load_shape("smollm2-135m")
    packed = dict(finetuning_type="lora", batch=1, seq=2048, device="cpu")
    whole = estimate_shape(shape, EstimateInput(**packed))
    per_example = estimate_shape(shape, EstimateInput(**packed, attention_seq=512))
    assert estimate_shape(shape, EstimateInput(**packed, attention_seq=2048)).activations == whole.activations
    assert whole.activations - per_example.activations == pytest.approx(shape.layers * shape.heads * (2048 - 512) * 2048 * 4)
    gpu = {**packed, "device": "cuda"}  # flash/memory-efficient SDPA keeps no probabilities either way
    gpu_acts = estimate_shape(shape, EstimateInput(**gpu)).activations
    assert estimate_shape(shape, EstimateInput(**gpu, attention_seq=512)).activations == gpu_acts


def test_memory_package_names_no_method():
    sources = {p.name: p.read_text() for p in (pathlib.Path(__file__).parents[1] / "src/tuneforge/memory").glob("*.py")}
    for name in methods.METHODS:
        for quoted in (f'"{name}"', f"'{name}'", f"{name}_"):
            hits = [f for f, text in sources.items() if quoted in text]
            assert not hits, f"{quoted} in memory/{hits}"


# ---------------------------------------------------------------- methods the estimator does not know

@dataclasses.dataclass
class ToySection:
    toy_size: int = 1

    def validate(self) -> list[str]:
        return []


def _toy_memory(shape, x):
    n = section(ToySection, x).toy_size
    return Footprint((Tensors(n * shape.hidden, 1, ADAPTER),), frozen_layers=shape.layers, detail={"method": f"{n} toy vectors"})


@pytest.fixture
def toy():
    """Registers `finetuning_type: toy` with the hooks asked for; removed afterwards."""
    names = []

    def register(name="toy", section_cls=None, **hooks):
        names.append(name)
        return register_method(name, section_cls, lambda model, cfg: model, **hooks)

    try:
        yield register
    finally:
        for name in names:
            unregister_method(name)


def test_a_method_without_memory_hook_gets_an_unknown_estimate(toy):
    toy()
    shape = load_shape("smollm2-135m")
    report = estimate_shape(shape, EstimateInput(finetuning_type="toy"))
    assert not report.known and report.total == 0
    assert report.to_dict()["known"] is False
    assert "finetuning_type toy has no memory hook" in report.detail["unknown"]
    assert describe(report, 8 * GIB) == "unknown: finetuning_type toy has no memory hook; the estimate is skipped"
    fits = search(shape, EstimateInput(finetuning_type="toy", batch=4, seq=256), 1000 * GIB, top=50)
    assert fits and not any(f.x.finetuning_type == "toy" for f in fits)


def test_unregistered_or_failing_methods_never_raise(toy):
    shape = load_shape("smollm2-135m")
    report = estimate_shape(shape, EstimateInput(finetuning_type="nothing_like_it"))
    assert not report.known and "not registered" in report.detail["unknown"]

    def broken(shape, x):
        raise RuntimeError("boom")

    toy("toy_broken", memory=broken, fit=(("broken", {}, 9.0),))
    report = estimate_shape(shape, EstimateInput(finetuning_type="toy_broken"))
    assert not report.known and "boom" in report.detail["unknown"]
    assert not any(f.x.finetuning_type == "toy_broken" for f in search(shape, EstimateInput(batch=1, seq=64), 1000 * GIB, top=50))


def test_cli_estimate_of_a_hookless_method_says_unknown(toy, capsys):
    from tuneforge.cli import main

    toy()
    rc = main(["estimate", "--model", "smollm2-135m", "--finetuning_type", "toy", "--batch", "1", "--seq", "64"])
    assert rc == 0 and "unknown: finetuning_type toy has no memory hook" in capsys.readouterr().out


def test_a_method_with_a_memory_hook_and_fit_candidates_is_searched(toy):
    toy(section_cls=ToySection, memory=_toy_memory, fit=(("toy x3", {"toy_size": 3}, 5.0),
                                                         ("toy x2 + 8-bit AdamW", {"toy_size": 2, "optim": "adamw_bnb_8bit"}, 4.0)))
    shape = load_shape("smollm2-135m")
    report = estimate_shape(shape, EstimateInput(finetuning_type="toy", options={"toy_size": 4}))
    assert report.known and report.trainable_params == 4 * shape.hidden
    assert report.weights == shape.total_params * 4 + 4 * shape.hidden * 4  # fp32 adapter beside the base
    fits = search(shape, EstimateInput(finetuning_type="lora", batch=4, seq=256), 1000 * GIB, top=50)
    by_name = {f.name: f for f in fits}
    first = by_name["toy x3"]
    assert fits[0] is first and first.x.options["toy_size"] == 3 and first.report.trainable_params == 3 * shape.hidden
    assert first.yaml() == ["finetuning_type: toy", "toy_size: 3", "per_device_train_batch_size: 4", "gradient_accumulation_steps: 1"]
    second = by_name["toy x2 + 8-bit AdamW"]
    assert second.x.optim == "adamw_bnb_8bit" and second.yaml()[:3] == ["finetuning_type: toy", "toy_size: 2", "optim: adamw_bnb_8bit"]
    # the other methods' configurations are still there, with their labels and settings
    assert {"lora", "lora + 8-bit AdamW", "qlora 8-bit", "qlora 4-bit", "full", "full + 8-bit AdamW", "freeze", "galore",
            "lisa"} <= set(by_name)
    assert by_name["qlora 4-bit"].yaml()[:2] == ["finetuning_type: lora", "quantization_bit: 4"]


def test_fit_yaml_lines_are_valid_config(tmp_path):
    import yaml

    shape = load_shape("smollm2-135m")
    base = EstimateInput(finetuning_type="lora", batch=4, seq=256, quantization_bit=4, optim="adamw_bnb_8bit")
    for f in search(shape, base, 1000 * GIB, top=50):
        flat = yaml.safe_load("\n".join(f.yaml()))
        assert flat["finetuning_type"] == f.x.finetuning_type
        # a candidate that does not quantize says so over the user's config; 8-bit AdamW is named where it counts it
        assert flat.get("quantization_bit", base.quantization_bit) == f.x.quantization_bit
        assert ("optim" in flat) == ("8bit" in f.x.optim) and flat.get("optim", f.x.optim) == f.x.optim
        config.load(None, {"output_dir": str(tmp_path / "o"), **flat})
