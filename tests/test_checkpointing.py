"""Partial activation checkpointing (`every_n_layers`): the config reads both spellings, the Trainer recomputes
exactly the chosen layers with unchanged losses, and the estimator and `--fit` count the same layers."""

import json
import math

import pytest
from test_methods_efficient import trainer_for

from tuneforge import config
from tuneforge.config import ConfigError
from tuneforge.config.train_args import build_training_arguments
from tuneforge.memory.estimate import BYTES, EstimateInput, estimate_shape, layer_activation_bytes_per_token
from tuneforge.memory.fit import search
from tuneforge.memory.shapes import load_shape
from tuneforge.train import checkpointing

SMOL = load_shape("smollm2-135m")
BASE = {"model_name_or_path": "smollm2-135m", "dataset": "identity", "output_dir": "unused"}


@pytest.mark.parametrize("args, every", [
    ({}, 0),
    ({"gradient_checkpointing": False, "gradient_checkpointing_kwargs": {"every_n_layers": 2}}, 0),
    ({"gradient_checkpointing": True}, 1),
    ({"activation_checkpointing": True, "activation_checkpointing_kwargs": {"every_n_layers": 3}}, 3),
    ({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": '{"use_reentrant": false, "every_n_layers": 2}'}, 2),
])
def test_both_spellings_and_json_kwargs_give_the_layer_step(args, every):
    assert checkpointing.every_n_layers(args) == every


@pytest.mark.parametrize("extra, words", [
    ({"gradient_checkpointing_kwargs": {"every_n_layers": 0}}, ["every_n_layers", ">= 1"]),
    ({"gradient_checkpointing_kwargs": {"every_n_layers": "2"}}, ["every_n_layers", "whole number"]),
    ({"gradient_checkpointing_kwargs": "every 2"}, ["gradient_checkpointing_kwargs", "JSON"]),
    ({"activation_checkpointing": False}, ["`gradient_checkpointing` and `activation_checkpointing`", "disagree"]),
])
def test_bad_checkpointing_settings_are_config_errors_naming_the_key(extra, words):
    with pytest.raises(ConfigError) as e:
        config.load(None, {**BASE, "gradient_checkpointing": True, **extra})
    assert all(w in str(e.value) for w in words), str(e.value)


def test_training_arguments_get_the_new_names_and_non_reentrant_checkpointing(recwarn):
    cfg = config.load(None, {**BASE, "gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"every_n_layers": 2}})
    args = build_training_arguments(cfg, check_only=True)
    assert args.activation_checkpointing is True
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False, "every_n_layers": 2}
    assert not [w for w in recwarn if "gradient_checkpointing" in str(w.message) and "deprecated" in str(w.message)]


@pytest.mark.parametrize("method", [{"finetuning_type": "lora"}, {"finetuning_type": "lora", "quantization_bit": 4}],
                         ids=["lora", "qlora"])  # QLoRA: peft's k-bit preparation checkpoints every layer first
def test_every_second_layer_is_recomputed_and_the_losses_do_not_change(wide_model_dir, data_dir, tmp_path, method):
    """6 layers, every_n_layers 2: layers 0, 2, 4 run their MLP twice per step (forward, then recompute in
    backward), layers 1, 3, 5 once; the per-step losses equal those without checkpointing."""
    losses, calls = {}, {}
    for name, kw in {"off": {}, "every2": {"gradient_checkpointing": True,
                                           "gradient_checkpointing_kwargs": {"every_n_layers": 2}}}.items():
        trainer = trainer_for(wide_model_dir, data_dir, tmp_path / name, max_steps=2, **method, **kw)
        layers = trainer.model.get_base_model().model.layers
        count = [0] * len(layers)
        for i, layer in enumerate(layers):
            # transformers checkpoints the layer's forward (its own hooks run once): count the MLP's calls inside it
            layer.mlp.register_forward_pre_hook(lambda m, a, i=i: count.__setitem__(i, count[i] + 1))
        trainer.train()
        losses[name] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        calls[name] = count
    assert calls["off"] == [2] * 6
    assert calls["every2"] == [4, 2, 4, 2, 4, 2]
    assert losses["every2"] == pytest.approx(losses["off"], abs=1e-5)


def _acts(**kw) -> float:
    return estimate_shape(SMOL, EstimateInput(**{"finetuning_type": "lora", "batch": 4, "seq": 256, **kw})).activations


def test_estimate_keeps_the_unchecked_layers_and_one_recomputed():
    none, every, half = _acts(), _acts(gradient_checkpointing=True), _acts(gradient_checkpointing=True, checkpoint_every=2)
    x = EstimateInput(finetuning_type="lora", batch=4, seq=256)
    per_layer = layer_activation_bytes_per_token(SMOL, x) * 1024
    layer_input = SMOL.hidden * BYTES["float32"] * 1024
    assert SMOL.layers == 30
    assert half - every == pytest.approx(15 * (per_layer - layer_input))  # 15 layers kept instead of checkpointed
    assert none - half == pytest.approx(15 * per_layer - 15 * layer_input - per_layer)
    assert every < half < none


def test_estimate_for_freeze_counts_only_the_trained_layers():
    # 30 layers, the top 3 (27, 28, 29) train; every 2nd: 28 is checkpointed, 27 and 29 keep their activations
    x = dict(finetuning_type="freeze", options={"freeze_trainable_layers": 3})
    none, half = _acts(**x), _acts(**x, gradient_checkpointing=True, checkpoint_every=2)
    per_layer = layer_activation_bytes_per_token(SMOL, EstimateInput(**x, batch=4, seq=256)) * 1024
    assert none - half == pytest.approx(per_layer - SMOL.hidden * 4 * 1024 - per_layer)  # one checkpointed, one recompute
    assert checkpointing.count(30, 2) == 15 and checkpointing.count(30, 4) == 8 and checkpointing.count(6, 1) == 6


def test_fit_picks_the_least_checkpointing_that_fits():
    x = EstimateInput(finetuning_type="lora", batch=1, seq=1024, device="cpu")
    total = {n: estimate_shape(SMOL, EstimateInput(**{**x.__dict__, "gradient_checkpointing": n > 0, "checkpoint_every": max(1, n)})).total
             for n in (0, 4, 2, 1)}
    assert total[0] > total[4] > total[2] > total[1]
    budget = (total[4] + total[2]) / 2  # no checkpointing and every 4th layer do not fit; every 2nd does
    fits = {f.name: f for f in search(SMOL, x, budget, effective_batch=1, top=20)}
    lora = fits["lora + checkpointing every 2nd layer"]
    assert lora.report.total == total[2] <= budget
    assert 'gradient_checkpointing_kwargs: {"every_n_layers": 2}' in lora.yaml()
    assert json.loads(lora.yaml()[-3].split(": ", 1)[1]) == {"every_n_layers": 2}  # the YAML line is valid
    assert math.isclose(lora.speed, 1.0 - 0.25 * 15 / 30)
    assert all(f.report.total <= budget for f in fits.values())
    assert len({(f.x.finetuning_type, f.x.optim, f.x.quantization_bit) for f in fits.values()}) == len(fits)  # one per method


def test_describe():
    assert checkpointing.describe(0) == "" and checkpointing.describe(1) == "checkpointing"
    assert [checkpointing.describe(n).split()[-2] for n in (2, 3, 4, 11, 22)] == ["2nd", "3rd", "4th", "11th", "22nd"]
