"""Stage kto on a tiny random model: tagged rows and split pairs train, the KL completions come from other rows of the
batch, LLaMA-Factory's names map, and TRL's own refusals (batch of 1, random sampling) come before anything loads."""

import math

import pytest

from conftest import write_json
from tuneforge import config, run, stages
from tuneforge.config.errors import ConfigError
from tuneforge.memory.estimate import EstimateInput

TAGGED = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                        {"role": "assistant", "content": f"{2 * i}." if i % 2 else "I cannot help with that."}],
           "label": bool(i % 2)} for i in range(8)]
PAIRS = [{"instruction": f"Name {i}.", "chosen": f"{i}.", "rejected": "No."} for i in range(4)]


@pytest.fixture
def kto_data(tmp_path):
    d = str(tmp_path / "data")
    write_json(f"{d}/tagged.json", TAGGED)
    write_json(f"{d}/pairs.json", PAIRS)
    write_json(f"{d}/dataset_info.json", {
        "tagged": {"file_name": "tagged.json", "formatting": "openai", "columns": {"messages": "messages", "kto_tag": "label"}},
        "pairs": {"file_name": "pairs.json", "ranking": True}})
    return d


def kto_cfg(model_dir, data_dir, tmp_path, **kw):
    return config.from_flat({"stage": "kto", "model_name_or_path": model_dir, "dataset": "tagged", "dataset_dir": data_dir,
                             "output_dir": str(tmp_path / "out"), "template": "chatml", "cutoff_len": 64,
                             "per_device_train_batch_size": 4, "max_steps": 1, "logging_steps": 1, "learning_rate": 1e-3,
                             "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
                             "cache_dir": str(tmp_path / "cache"), "allocator": "system", **kw})


@pytest.mark.parametrize("dataset", ["tagged", "pairs", "tagged,pairs"])
def test_a_lora_kto_step_runs_on_tagged_rows_and_split_pairs(tiny_model_dir, kto_data, tmp_path, dataset):
    prepared = run.build(kto_cfg(tiny_model_dir, kto_data, tmp_path, dataset=dataset))
    trainer = prepared.trainer
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]
    expected = {"tagged": 8, "pairs": 8, "tagged,pairs": 16}[dataset]
    assert prepared.stats["train_desirable"] + prepared.stats["train_undesirable"] == expected
    trainer.train()
    logs = trainer.state.log_history[0]
    assert math.isfinite(logs["loss"]) and "kl" in logs


def test_kl_completions_are_the_batch_rotated_by_one(tiny_model_dir, kto_data, tmp_path):
    train = run.build(kto_cfg(tiny_model_dir, kto_data, tmp_path)).trainer.train_dataset
    first = train.select(range(4))
    assert first["KL_completion_ids"] == [first["completion_ids"][-1]] + first["completion_ids"][:-1]


def test_full_fine_tuning_gets_a_frozen_reference(tiny_model_dir, kto_data, tmp_path):
    trainer = run.build(kto_cfg(tiny_model_dir, kto_data, tmp_path, finetuning_type="full")).trainer
    ref = trainer.accelerator.unwrap_model(trainer.ref_model)
    assert ref is not None and not any(p.requires_grad for p in ref.parameters())


def test_llamafactory_names_map_onto_trl_keys():
    cfg = config.from_flat({"stage": "kto", "output_dir": "o", "pref_beta": 0.2, "kto_chosen_weight": 1.5,
                            "kto_rejected_weight": 0.5})
    assert {k: cfg.train.args[k] for k in ("beta", "desirable_weight", "undesirable_weight")} == {
        "beta": 0.2, "desirable_weight": 1.5, "undesirable_weight": 0.5}


@pytest.mark.parametrize("flat,key", [({"per_device_train_batch_size": 1}, "per_device_train_batch_size must be > 1"),
                                      ({"train_sampling_strategy": "random"}, "train_sampling_strategy must be sequential"),
                                      ({"kto_rejected_weight": 0}, "undesirable_weight must be > 0")])
def test_what_kto_trainer_would_refuse_is_refused_at_load_naming_the_key(flat, key):
    with pytest.raises(ConfigError, match=key):
        config.from_flat({"stage": "kto", "output_dir": "o", **flat})
    config.from_flat({"stage": "kto", "output_dir": "o", "per_device_train_batch_size": 1, "loss_type": "apo_zero_unpaired"})


@pytest.mark.parametrize("method,copies", [("lora", 0), ("full", 1)])
def test_memory_hook_counts_the_reference_copy(method, copies):
    cfg = config.from_flat({"stage": "kto", "output_dir": "o", "finetuning_type": method})
    x = stages.get("kto").memory(EstimateInput(finetuning_type=method, batch=4), cfg)
    assert x.batch == 4 and x.reference_copies == copies


LLAMAFACTORY_KTO = """### model
model_name_or_path: {model}
trust_remote_code: true

### method
stage: kto
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
pref_beta: 0.1

### dataset
dataset: kto_demo
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
per_device_train_batch_size: {batch}
gradient_accumulation_steps: 8
learning_rate: 5.0e-6
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: false
ddp_timeout: 180000000
resume_from_checkpoint: null
"""


def test_a_llamafactory_kto_yaml_runs_and_a_batch_of_one_is_refused_naming_the_fix(tiny_model_dir, tmp_path, monkeypatch,
                                                                                    capsys):
    import os

    from tuneforge.cli import main

    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # its dataset_dir: data
    path = tmp_path / "llama3_lora_kto.yaml"
    path.write_text(LLAMAFACTORY_KTO.format(model=tiny_model_dir, out=tmp_path / "one", batch=1))
    assert main(["train", str(path), "max_steps=1", f"cache_dir={tmp_path}/cache"]) != 0
    assert "per_device_train_batch_size must be > 1 for stage kto" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "one" / "events.jsonl")  # refused before anything ran
    path.write_text(LLAMAFACTORY_KTO.format(model=tiny_model_dir, out=tmp_path / "two", batch=2))
    assert main(["train", str(path), "max_steps=1", f"cache_dir={tmp_path}/cache"]) == 0
    assert os.path.isfile(tmp_path / "two" / "adapter_model.safetensors")
