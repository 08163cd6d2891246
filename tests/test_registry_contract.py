"""A new method and a new stage are one registration each: a toy method and a toy stage registered here, with no
other file edited, flow through config validation, `describe()`, `--help-keys`, the estimator, `--fit` and a 2-step
training run."""

import dataclasses
import json

import pytest
import torch
from transformers import TrainingArguments

from tuneforge import config, run
from tuneforge.cli import main
from tuneforge.config import field
from tuneforge.methods.registry import register_method, unregister_method
from tuneforge.stages.registry import register_stage, unregister_stage


@dataclasses.dataclass
class ToySection:
    """Options of finetuning_type: toy."""

    toy_scale: float = field(1.0, help="How much the toy method scales nothing at all.")

    def validate(self) -> list[str]:
        return [f"toy_scale must be > 0 (got {self.toy_scale})"] if self.toy_scale <= 0 else []


def toy_apply(model, cfg):
    """Only the final norm trains."""
    for name, p in model.named_parameters():
        p.requires_grad_(name == "model.norm.weight")
    return model


def toy_memory(shape, x):
    from tuneforge.memory.footprint import Footprint, Tensors

    return Footprint((Tensors(shape.hidden),), frozen_layers=shape.layers)


@dataclasses.dataclass
class ToyArguments(TrainingArguments):
    """A stage's own arguments class, the way TRL's configs extend TrainingArguments."""

    toy_beta: float = dataclasses.field(default=0.1, metadata={"help": "A knob only the toy stage has."})


def toy_stage_memory(x, cfg):
    """Pairs double the rows; a frozen reference copy; a named buffer."""
    return dataclasses.replace(x, batch=2 * x.batch, reference_copies=1, extra={"toy buffer": 2**30})


def toy_build_data(cfg, tokenizer, progress=None):
    from tuneforge.stages import sft

    return sft.build_data(cfg, tokenizer, progress)


def toy_build_trainer(cfg, model, tokenizer, datasets, collator, callbacks):
    from tuneforge.stages.common import build_trainer

    trainer = build_trainer(cfg, model, tokenizer, datasets, collator, callbacks)  # a plain transformers.Trainer
    assert trainer.args.toy_beta == cfg.train.get("toy_beta")
    return trainer


@pytest.fixture
def toys():
    config.load(None, {"output_dir": "o"})  # registries populated first
    register_method("toy", ToySection, toy_apply, memory=toy_memory, fit=(("toy", {}, 3.0),), help="Only the final norm trains.")
    register_stage("toystage", toy_build_data, toy_build_trainer, args_class=lambda: ToyArguments, data_kind="supervised",
                   train_defaults={"max_grad_norm": 0.5}, help="SFT data on a plain Trainer.",
                   llamafactory_names={"toy_pref_beta": ("toy_beta", float)}, memory=toy_stage_memory)
    try:
        yield
    finally:
        unregister_method("toy")
        unregister_stage("toystage")


def test_toy_method_and_stage_pass_validation_and_their_own_checks_name_their_keys(toys):
    cfg = config.load(None, {"output_dir": "o", "stage": "toystage", "finetuning_type": "toy", "toy_scale": 2, "toy_beta": 0.3})
    assert cfg.method_section().toy_scale == 2.0 and cfg.train.args["toy_beta"] == 0.3
    with pytest.raises(config.ConfigError) as e:
        config.load(None, {"output_dir": "o", "stage": "toystage", "finetuning_type": "toy", "toy_scale": -1})
    assert [p.key for p in e.value.problems] == ["toy_scale"]
    with pytest.raises(config.ConfigError) as e:
        config.load(None, {"output_dir": "o", "toy_beta": 0.3})  # the sft stage has no toy_beta
    assert e.value.problems[0].key == "toy_beta" and "belongs to stage toystage" in str(e.value)
    with pytest.raises(config.ConfigError, match="quantization_bit needs an adapter method"):
        config.load(None, {"output_dir": "o", "finetuning_type": "toy", "quantization_bit": 4})
    resolved = config.resolve(config.load(None, {"output_dir": "o", "stage": "toystage", "finetuning_type": "toy"}), quiet=True)
    assert resolved.train.args["max_grad_norm"] == 0.5  # the stage's default, filled and recorded
    assert ("max_grad_norm", 1.0, 0.5, "stage toystage default") in resolved.changes


def test_toy_method_and_stage_are_described_and_listed_in_help_keys(toys, capsys):
    keys = {k.name: k for k in config.describe()}
    assert keys["toy_scale"].owner == "toy" and keys["toy_scale"].type == "float" and keys["toy_scale"].default == 1.0
    assert keys["toy_beta"].owner == "toystage" and keys["toy_beta"].section == "train"
    assert "toystage" in keys["stage"].choices and "toy" in keys["finetuning_type"].choices
    assert main(["train", "--help-keys"]) == 0
    out = capsys.readouterr().out
    assert "toystage (supervised data): SFT data on a plain Trainer." in out
    assert "toy: Only the final norm trains." in out and "toy_scale (float; default 1.0)" in out
    assert "toy_beta (float; default 0.1) [stage toystage]" in out
    assert main(["train", "--help-keys", "--json"]) == 0
    assert any(k["name"] == "toy_scale" for k in json.loads(capsys.readouterr().out))


def test_toy_method_is_estimated_and_fitted(toys, capsys):
    from tuneforge.memory.api import input_from_config
    from tuneforge.memory.estimate import estimate_shape
    from tuneforge.memory.fit import search
    from tuneforge.memory.shapes import load_shape

    shape = load_shape("smollm2-135m")
    cfg = config.resolve(config.load(None, {"output_dir": "o", "model_name_or_path": "smollm2-135m", "finetuning_type": "toy"}),
                         quiet=True)
    report = estimate_shape(shape, input_from_config(cfg))
    assert report.known and report.trainable_params == shape.hidden and report.total > report.weights
    fits = search(shape, input_from_config(cfg), 64 * 2**30)
    assert fits[0].name == "toy" and "finetuning_type: toy" in fits[0].yaml()
    assert main(["estimate", "--model", "smollm2-135m", "--finetuning_type", "toy", "--batch", "2", "--seq", "64"]) == 0
    assert f"{shape.hidden:,} of" in capsys.readouterr().out


def test_a_method_without_a_memory_hook_is_estimated_as_unknown_and_still_trains(tiny_model_dir, data_dir, tmp_path, caplog):
    import logging

    register_method("toy_nohook", None, toy_apply)
    try:
        args = ["train", f"model_name_or_path={tiny_model_dir}", "dataset=my_alpaca", f"dataset_dir={data_dir}", "template=chatml",
                f"output_dir={tmp_path}/run", "max_steps=1", "finetuning_type=toy_nohook", f"cache_dir={tmp_path}/cache"]
        with caplog.at_level(logging.INFO, logger="tuneforge.memory"):
            assert main(args) == 0
        assert "memory estimate unknown: finetuning_type toy_nohook has no memory hook" in caplog.text
    finally:
        unregister_method("toy_nohook")


def test_toy_method_and_stage_train_two_steps(toys, tiny_model_dir, data_dir, tmp_path):
    args = ["train", f"model_name_or_path={tiny_model_dir}", "dataset=my_alpaca", f"dataset_dir={data_dir}", "template=chatml",
            f"output_dir={tmp_path}/run", "stage=toystage", "finetuning_type=toy", "toy_beta=0.25", "max_steps=2",
            "logging_steps=1", "learning_rate=1e-1", "save_strategy=no", f"cache_dir={tmp_path}/cache"]
    cfg = config.load(None, dict(a.split("=", 1) for a in args[1:]))
    prepared = run.build(cfg)
    before = {n: p.detach().clone() for n, p in prepared.trainer.model.named_parameters()}
    metrics = run.train_and_save(prepared)
    changed = {n for n, p in prepared.trainer.model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == {"model.norm.weight"} and metrics["trainable_params"] == 32
    assert type(prepared.trainer).__name__ == "Trainer"
    assert main([*args[:5], f"output_dir={tmp_path}/run2", *args[6:]]) == 0
    events = run.read_events(f"{tmp_path}/run2")
    assert events[0]["stage"] == "toystage" and events[0]["finetuning_type"] == "toy" and events[-1]["event"] == "finished"
    assert [e["step"] for e in events if e["event"] == "step" and "loss" in e] == [1, 2]


def test_a_stage_maps_llamafactory_names_onto_its_own_keys_and_only_when_chosen(toys):
    cfg = config.load(None, {"output_dir": "o", "stage": "toystage", "toy_pref_beta": "0.25"})
    assert cfg.train.args["toy_beta"] == 0.25 and "toy_beta" in cfg.given
    with pytest.raises(config.ConfigError) as e:  # both names for one value
        config.load(None, {"output_dir": "o", "stage": "toystage", "toy_pref_beta": 0.2, "toy_beta": 0.3})
    assert e.value.problems[0].key == "toy_pref_beta" and "keep one" in str(e.value)
    with pytest.raises(config.ConfigError) as e:  # another stage's name
        config.load(None, {"output_dir": "o", "toy_pref_beta": 0.2})
    assert e.value.problems[0].key == "toy_pref_beta" and "belongs to stage toystage" in str(e.value)
    from tuneforge.config.loader import known_keys

    assert "toy_pref_beta" in known_keys()
    described = {k.name: k for k in config.describe()}["toy_pref_beta"]
    assert described.owner == "toystage" and described.llamafactory and "`toy_beta`" in described.help


def test_a_stage_memory_hook_adds_pairs_a_reference_copy_and_named_buffers(toys):
    from tuneforge.memory.estimate import estimate_shape
    from tuneforge.memory.shapes import load_shape
    from tuneforge.run.memory_check import Batch, estimate_for

    shape = load_shape("smollm2-135m")
    plain = config.resolve(config.load(None, {"output_dir": "o", "model_name_or_path": "smollm2-135m", "torch_dtype": "float32"}), quiet=True)
    staged = config.resolve(config.load(None, {"output_dir": "o", "model_name_or_path": "smollm2-135m", "stage": "toystage",
                                               "torch_dtype": "float32"}),
                            quiet=True)
    batch = Batch(2, 64, 64, 2, "two rows")
    (base, _), (report, x) = estimate_for(plain, shape, batch), estimate_for(staged, shape, batch)
    assert x.batch == 4 and x.reference_copies == 1
    assert report.weights - base.weights == pytest.approx(shape.total_params * 4, rel=0.03)
    assert "reference" in report.detail["weights"] and "toy buffer" in report.detail["overhead"]
    assert report.activations > base.activations and report.overhead - base.overhead > 2**30 * 0.99
    assert estimate_shape(shape, x).total == pytest.approx(report.total)
