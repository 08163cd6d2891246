"""Stage dpo on a tiny random model: the reference is the adapter turned off with LoRA (no second copy of the base), a
frozen copy loaded from the model folder with full fine-tuning, precomputed log-probs, or nothing for orpo/simpo;
LLaMA-Factory's names map onto TRL's; bad losses are refused naming the key; the memory hook counts pairs and copies."""

import gc
import math

import pytest

from conftest import write_json
from tuneforge import config, run, stages
from tuneforge.config.errors import ConfigError
from tuneforge.memory.estimate import EstimateInput

PAIRS = [{"instruction": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": f"Maybe {i}{i}, I guess."} for i in range(8)]


@pytest.fixture
def pref_data(tmp_path):
    d = str(tmp_path / "data")
    write_json(f"{d}/pairs.json", PAIRS)
    write_json(f"{d}/dataset_info.json", {"pairs": {"file_name": "pairs.json", "ranking": True}})
    return d


def dpo_cfg(model_dir, data_dir, tmp_path, **kw):
    return config.from_flat({"stage": "dpo", "model_name_or_path": model_dir, "dataset": "pairs", "dataset_dir": data_dir,
                             "output_dir": str(tmp_path / "out"), "template": "chatml", "cutoff_len": 64,
                             "per_device_train_batch_size": 2, "max_steps": 1, "logging_steps": 1, "learning_rate": 1e-3,
                             "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
                             "cache_dir": str(tmp_path / "cache"), "allocator": "system", **kw})


def one_step(trainer) -> dict:
    trainer.train()
    return trainer.state.log_history[0]


def causal_lms() -> list:
    """Every causal LM alive in this process (a whole model: backbone and head)."""
    from transformers import PreTrainedModel

    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, PreTrainedModel) and type(o).__name__.endswith("ForCausalLM")]


def test_lora_reference_is_the_base_with_the_adapter_off_and_no_second_copy(tiny_model_dir, pref_data, tmp_path):
    import torch

    before = len(causal_lms())
    trainer = run.build(dpo_cfg(tiny_model_dir, pref_data, tmp_path)).trainer
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]  # TRL's `ref` copy dropped
    assert len(causal_lms()) == before + 1  # the policy's base is the only model
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]]))
    with torch.no_grad():
        for p in (p for n, p in trainer.model.named_parameters() if "lora_B" in n):
            p.normal_()  # the adapter now changes the output
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        ref = trainer.compute_ref_log_probs(trainer.model, batch)
        with trainer.model.disable_adapter():
            base = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                                 fused_lm_head=True).log_probs.sum(1).chunk(2)
        tuned = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                              fused_lm_head=True).log_probs.sum(1).chunk(2)
    assert torch.allclose(ref[0], base[0]) and torch.allclose(ref[1], base[1])
    assert not torch.allclose(ref[0], tuned[0])


def test_a_lora_step_runs_and_logs_the_preference_metrics(tiny_model_dir, pref_data, tmp_path):
    logs = one_step(run.build(dpo_cfg(tiny_model_dir, pref_data, tmp_path)).trainer)
    assert math.isclose(logs["loss"], math.log(2), rel_tol=1e-3)  # policy == reference at step 1: -log sigmoid(0)
    assert {"rewards/margins", "logps/chosen", "logps/rejected"} <= set(logs)


def test_full_fine_tuning_gets_a_frozen_reference_loaded_from_the_model_folder(tiny_model_dir, pref_data, tmp_path):
    import torch

    prepared = run.build(dpo_cfg(tiny_model_dir, pref_data, tmp_path, finetuning_type="full"))
    trainer = prepared.trainer
    ref = trainer.accelerator.unwrap_model(trainer.ref_model)
    assert ref is not None and ref is not trainer.model and not any(p.requires_grad for p in ref.parameters())
    policy = dict(trainer.model.named_parameters())
    assert all(torch.equal(p, policy[n]) for n, p in ref.named_parameters())
    logs = one_step(trainer)
    assert math.isclose(logs["loss"], math.log(2), rel_tol=1e-3)
    assert any(not torch.equal(p, policy[n]) for n, p in ref.named_parameters())  # the policy moved, the reference did not


def test_precomputed_reference_log_probs_need_no_copy(tiny_model_dir, pref_data, tmp_path):
    trainer = run.build(dpo_cfg(tiny_model_dir, pref_data, tmp_path, finetuning_type="full", precompute_ref_log_probs=True)).trainer
    assert trainer.ref_model is None
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(trainer.train_dataset.column_names)
    assert math.isclose(one_step(trainer)["loss"], math.log(2), rel_tol=1e-3)


@pytest.mark.parametrize("loss,method", [("orpo", "lora"), ("simpo", "full")])
def test_orpo_and_simpo_run_without_any_reference(tiny_model_dir, pref_data, tmp_path, loss, method):
    before = len(causal_lms())
    trainer = run.build(dpo_cfg(tiny_model_dir, pref_data, tmp_path, pref_loss=loss, finetuning_type=method)).trainer
    assert type(trainer).__name__ == "ReferenceFreeTrainer" and not hasattr(trainer, "ref_model")
    assert len(causal_lms()) == before + 1
    logs = one_step(trainer)
    assert math.isfinite(logs["loss"]) and {"rewards/margins", "logps/chosen"} <= set(logs)


def test_orpo_and_simpo_losses_follow_their_formulas():
    import torch

    from tuneforge.stages.reference_free import pair_losses

    c, r = torch.tensor([-0.5]), torch.tensor([-2.0])
    odds = lambda p: p - math.log(1 - math.exp(p))  # noqa: E731
    orpo = 0.5 + 0.1 * -math.log(1 / (1 + math.exp(-(odds(-0.5) - odds(-2.0)))))
    assert math.isclose(pair_losses("orpo", c, r, 0.1, 0.5, 0.0).item(), orpo, rel_tol=1e-5)
    simpo = -math.log(1 / (1 + math.exp(-(2.0 * 1.5 - 0.5))))
    assert math.isclose(pair_losses("simpo", c, r, 2.0, 0.5, 0.0).item(), simpo, rel_tol=1e-5)
    assert math.isclose(pair_losses("simpo", c, r, 2.0, 0.5, 1.0).item(), simpo + 0.5, rel_tol=1e-5)  # + pref_ftx * -c


def test_pref_ftx_adds_the_sft_loss_on_chosen_replies(tiny_model_dir, pref_data, tmp_path):
    trainer = run.build(dpo_cfg(tiny_model_dir, pref_data, tmp_path, pref_ftx=0.5)).trainer
    assert trainer.loss_types == ["sigmoid", "sft"] and trainer.loss_weights == [1.0, 0.5]
    assert one_step(trainer)["loss"] > math.log(2) + 1.0  # the chosen replies' NLL on a random model is large


def test_llamafactory_names_map_onto_trl_keys():
    cfg = config.from_flat({"stage": "dpo", "output_dir": "o", "pref_beta": 0.25, "pref_loss": "ipo", "dpo_label_smoothing": 0.1,
                            "pref_ftx": 0.3, "simpo_gamma": 1.0, "ld_alpha": 0.5})
    assert {k: cfg.train.args[k] for k in ("beta", "loss_type", "label_smoothing", "pref_ftx", "simpo_gamma", "ld_alpha")} == {
        "beta": 0.25, "loss_type": ["ipo"], "label_smoothing": 0.1, "pref_ftx": 0.3, "simpo_gamma": 1.0, "ld_alpha": 0.5}


@pytest.mark.parametrize("value,words", [("sigmod", "did you mean"), ("kto_pair", "stage: kto"),
                                         (["orpo", "sigmoid"], "cannot be combined")])
def test_bad_losses_are_refused_naming_the_key(value, words):
    with pytest.raises(ConfigError) as e:
        config.from_flat({"stage": "dpo", "output_dir": "o", "pref_loss": value})
    assert any(p.key == "pref_loss" and words in p.message for p in e.value.problems), e.value.problems


def test_sync_ref_model_with_an_adapter_is_refused_when_the_config_loads():
    with pytest.raises(ConfigError) as e:
        config.from_flat({"stage": "dpo", "output_dir": "o", "finetuning_type": "lora", "sync_ref_model": True})
    assert [p.key for p in e.value.problems] == ["sync_ref_model"] and "finetuning_type full" in str(e.value)
    config.from_flat({"stage": "dpo", "output_dir": "o", "finetuning_type": "full", "sync_ref_model": True})


def test_a_loss_type_written_directly_is_checked_too():
    with pytest.raises(ConfigError, match="loss_type \\(pref_loss\\) must name losses among"):
        config.from_flat({"stage": "dpo", "output_dir": "o", "loss_type": ["sigmoid", "nope"]})


@pytest.mark.parametrize("flat,copies", [({}, 0), ({"finetuning_type": "full"}, 1), ({"finetuning_type": "freeze"}, 1),
                                         ({"finetuning_type": "full", "precompute_ref_log_probs": True}, 0),
                                         ({"finetuning_type": "full", "pref_loss": "simpo"}, 0)])
def test_memory_hook_doubles_the_rows_and_counts_the_reference(flat, copies):
    cfg = config.from_flat({"stage": "dpo", "output_dir": "o", **flat})
    x = stages.get("dpo").memory(EstimateInput(finetuning_type=cfg.method.finetuning_type, batch=4), cfg)
    assert x.batch == 8 and x.reference_copies == copies


def test_fit_estimates_every_candidate_as_the_stage_runs_it():
    from dataclasses import replace

    from tuneforge.memory.api import input_from_config, shape_of
    from tuneforge.memory.estimate import GIB, estimate_shape
    from tuneforge.memory.fit import search, stage_memory

    cfg = config.from_flat({"stage": "dpo", "output_dir": "o", "finetuning_type": "full"})
    shape, x = shape_of("smollm2-135m"), input_from_config(cfg, batch=4, seq=256)
    fits = {f.name: f for f in search(shape, x, 64 * GIB, effective_batch=4, top=50, adjust=stage_memory(cfg))}
    full, lora = fits["full"], fits["lora"]
    assert full.x.batch == 4 and "per_device_train_batch_size: 4" in full.yaml()  # the config's terms: pairs
    as_run = estimate_shape(shape, replace(full.x, batch=8, reference_copies=1.0))
    assert full.report.total == as_run.total > estimate_shape(shape, full.x).total
    assert "reference" in full.report.detail["weights"] and "reference" not in lora.report.detail["weights"]


LLAMAFACTORY_DPO = """### model
model_name_or_path: {model}
trust_remote_code: true

### method
stage: dpo
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
pref_beta: 0.1
pref_loss: {loss}  # choices: [sigmoid (dpo), orpo, simpo]

### dataset
dataset: dpo_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 1
dataloader_num_workers: 0

### output
output_dir: {out}
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 5.0e-6
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: false
ddp_timeout: 180000000
resume_from_checkpoint: null
"""


@pytest.mark.parametrize("loss", ["sigmoid", "simpo"])
def test_a_llamafactory_dpo_yaml_runs_with_only_the_model_path_changed(tiny_model_dir, tmp_path, monkeypatch, loss):
    import os

    from tuneforge.cli import main

    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # its dataset_dir: data
    path = tmp_path / "llama3_lora_dpo.yaml"
    path.write_text(LLAMAFACTORY_DPO.format(model=tiny_model_dir, loss=loss, out=tmp_path / "out"))
    assert main(["train", str(path), "max_steps=1", f"cache_dir={tmp_path}/cache"]) == 0
    assert os.path.isfile(tmp_path / "out" / "adapter_model.safetensors")
    assert not os.path.exists(tmp_path / "out" / "ref")  # no copy of the adapter saved beside it
