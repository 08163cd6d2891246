"""Exact resume and crash-safe checkpoints: what counts as a complete checkpoint, what `auto` picks, what
save_total_limit keeps, that a resumed run (mid-epoch, in epoch 2) continues with the same losses and weights, and
that a resume with a changed config or dataset is refused with what changed. fp32 on the CPU; losses and weights are
held to 1e-6 relative (observed: bit-equal)."""

import json
import logging
import os
import shutil

import pytest
import torch

from tuneforge import TuneforgeError, config, run
from tuneforge.train import checkpoints as ckpt
from tuneforge.train.output import checkpoints, resolve_resume
from tuneforge.train.resume_fingerprint import FILE as RESUME_FILE, data_fingerprint


def make_checkpoint(folder, step, files=None, manifest=True):
    os.makedirs(folder, exist_ok=True)
    for name, text in (files if files is not None else {"trainer_state.json": "{}", "model.safetensors": "weights"}).items():
        with open(os.path.join(folder, name), "w") as fh:
            fh.write(text)
    if manifest:
        ckpt.write_manifest(str(folder), step)
    return str(folder)


# --- what complete means -----------------------------------------------------------------------------------------

def test_a_checkpoint_is_complete_only_while_every_file_of_its_manifest_is_whole(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoint-3", 3)
    assert ckpt.is_complete(folder) == (True, "")
    with open(os.path.join(folder, "model.safetensors"), "w") as fh:
        fh.write("cut")
    assert ckpt.is_complete(folder) == (False, "model.safetensors has 3 bytes, not 7")
    os.remove(os.path.join(folder, "model.safetensors"))
    assert ckpt.is_complete(folder) == (False, "model.safetensors is missing")


def test_a_folder_without_manifest_counts_only_with_a_readable_trainer_state(tmp_path):
    legacy = make_checkpoint(tmp_path / "checkpoint-1", 1, manifest=False)  # an older tuneforge's, or transformers'
    assert ckpt.is_complete(legacy)[0]
    cut = make_checkpoint(tmp_path / "checkpoint-2", 2, {"trainer_state.json": '{"global_st'}, manifest=False)
    assert ckpt.is_complete(cut) == (False, "its trainer_state.json is cut short (its save was interrupted)")
    empty = make_checkpoint(tmp_path / "checkpoint-3", 3, {}, manifest=False)
    assert "no trainer_state.json" in ckpt.is_complete(empty)[1]


def test_auto_picks_the_newest_complete_checkpoint_and_logs_the_skipped_one(tmp_path, caplog):
    out = tmp_path / "run"
    for step in (5, 20, 10):
        make_checkpoint(out / f"checkpoint-{step}", step)
    make_checkpoint(out / "checkpoint-30", 30, {"model.safetensors": "half"}, manifest=False)
    cfg = config.load(None, {"output_dir": str(out), "resume_from_checkpoint": "auto"})
    with caplog.at_level(logging.INFO):
        resolved = config.resolve(cfg)
    assert resolved.output.resume_from_checkpoint == str(out / "checkpoint-20")
    assert "checkpoint-30 skipped: it has no trainer_state.json" in caplog.text
    assert checkpoints(str(out)) == [str(out / f"checkpoint-{s}") for s in (5, 10, 20)]


def test_only_incomplete_checkpoints_are_refused_naming_overwrite_output_dir(tmp_path):
    out = tmp_path / "run"
    make_checkpoint(out / "checkpoint-4", 4, {"adapter_model.safetensors": "x"}, manifest=False)
    for resume in ("auto", None):
        cfg = config.resolve(config.load(None, {"output_dir": str(out), "resume_from_checkpoint": resume}), quiet=True)
        with pytest.raises(TuneforgeError, match=r"none is complete \(checkpoint-4: it has no trainer_state.json.*"
                                                 r"overwrite_output_dir: true"):
            resolve_resume(cfg.output)


def test_resuming_from_a_named_incomplete_checkpoint_is_refused(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoint-4", 4)
    os.remove(os.path.join(folder, "model.safetensors"))
    cfg = config.load(None, {"output_dir": str(tmp_path), "resume_from_checkpoint": folder})
    with pytest.raises(TuneforgeError, match="is incomplete: model.safetensors is missing; use `auto`"):
        resolve_resume(cfg.output)


def test_rotation_never_deletes_the_newest_complete_checkpoint_nor_the_best(tmp_path):
    out = tmp_path / "run"
    for step in (2, 4, 6):
        make_checkpoint(out / f"checkpoint-{step}", step)
    make_checkpoint(out / "checkpoint-8", 8, {"model.safetensors": "half"}, manifest=False)  # a crash's leftover
    # transformers' own rotation (by step here) would protect checkpoint-8, the highest, and delete checkpoint-6
    deleted = ckpt.rotate(str(out), 1, best=str(out / "checkpoint-2"))
    assert deleted == [str(out / "checkpoint-4")]
    assert sorted(os.listdir(out)) == ["checkpoint-2", "checkpoint-6", "checkpoint-8"]
    assert ckpt.rotate(str(out), 1, best=None) == [str(out / "checkpoint-2")]


def test_the_data_hash_follows_rows_and_order_not_arrow_chunks():
    from datasets import Dataset, concatenate_datasets

    rows = {"input_ids": [[1, 2, 3], [4], [5, 6]], "labels": [[-100, 2, 3], [4], [-100, 6]]}
    whole = Dataset.from_dict(rows)
    pieces = concatenate_datasets([Dataset.from_dict({k: v[:1] for k, v in rows.items()}),
                                   Dataset.from_dict({k: v[1:] for k, v in rows.items()})])
    assert data_fingerprint(whole) == data_fingerprint(pieces)
    assert data_fingerprint(whole) != data_fingerprint(whole.select([1, 0, 2]))
    assert data_fingerprint(whole) != data_fingerprint(Dataset.from_dict({**rows, "input_ids": [[1, 2, 3], [4], [5, 7]]}))
    assert data_fingerprint(whole.to_iterable_dataset()) is None


def test_every_trainer_class_gets_the_atomic_save_in_front():
    from transformers import Trainer
    from trl import DPOTrainer

    from tuneforge.train.trainer import SupervisedLossTrainer

    wrapped = ckpt.with_atomic_checkpoints(DPOTrainer)
    assert wrapped.__mro__[1:3] == (ckpt.AtomicCheckpoints, DPOTrainer) and wrapped.__name__ == "DPOTrainer"
    assert wrapped._save_checkpoint is ckpt.AtomicCheckpoints._save_checkpoint
    assert ckpt.with_atomic_checkpoints(DPOTrainer) is wrapped
    assert ckpt.with_atomic_checkpoints(SupervisedLossTrainer) is SupervisedLossTrainer
    assert issubclass(ckpt.with_atomic_checkpoints(Trainer), ckpt.AtomicCheckpoints)


# --- runs -----------------------------------------------------------------------------------------------------------

def make_cfg(model_dir, data_dir, out, cache, **kw):
    base = {"model_name_or_path": model_dir, "dataset": "my_alpaca,my_chat", "dataset_dir": data_dir, "output_dir": str(out),
            "template": "chatml", "cutoff_len": 64, "per_device_train_batch_size": 4, "num_train_epochs": 2,
            "logging_steps": 1, "learning_rate": 1e-2, "save_strategy": "steps", "save_steps": 4, "cache_dir": str(cache),
            "disable_tqdm": True, "lora_rank": 4, "allocator": "system"}
    return config.load(None, {**base, **kw})


def losses(out) -> dict:
    with open(os.path.join(out, "trainer_log.jsonl")) as fh:
        return {r["step"]: r["loss"] for r in map(json.loads, fh) if "loss" in r}


def weights(trainer) -> dict:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def train(cfg):
    prepared = run.build(cfg)
    run.train_and_save(prepared)
    return prepared.trainer


CASES = {
    "lora, packed": {},
    "lora, unpacked, dropout, grad accumulation": {"packing": False, "lora_dropout": 0.1, "gradient_accumulation_steps": 2,
                                                    "save_steps": 2},
    "lisa": {"finetuning_type": "lisa", "lisa_layers": 1, "lisa_interval": 3, "learning_rate": 1e-3},
}


@pytest.mark.parametrize("case", CASES)
def test_a_run_resumed_mid_epoch_in_epoch_two_equals_the_uninterrupted_one(tiny_model_dir, data_dir, tmp_path, case):
    kw = CASES[case]
    per_epoch = 6 // kw.get("gradient_accumulation_steps", 1)
    at = per_epoch + (1 if per_epoch == 3 else 2)  # epoch 2, mid-epoch: step 8 of 12 (or 4 of 6)
    full = train(make_cfg(tiny_model_dir, data_dir, tmp_path / "full", tmp_path / "cache", **kw))
    assert sorted(losses(tmp_path / "full")) == list(range(1, 2 * per_epoch + 1))

    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full" / f"checkpoint-{at}", part / f"checkpoint-{at}")
    os.makedirs(part / ".tmp-checkpoint-99" / "checkpoint-99")  # a save a crash interrupted
    resumed = train(make_cfg(tiny_model_dir, data_dir, part, tmp_path / "cache", resume_from_checkpoint="auto", **kw))
    after = losses(part)
    assert sorted(after) == list(range(at + 1, 2 * per_epoch + 1))
    expected = losses(tmp_path / "full")
    assert [after[s] for s in sorted(after)] == pytest.approx([expected[s] for s in sorted(after)], rel=1e-6, abs=0)
    a, b = weights(full), weights(resumed)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=0, msg=name)
    assert not os.path.exists(part / ".tmp-checkpoint-99")  # cleaned by the first save
    if case == "lisa":
        from tuneforge.methods.lisa import LisaCallback

        saved = json.load(open(part / f"checkpoint-{at}" / RESUME_FILE))["callbacks"]["LisaCallback"]
        lisa = next(c for c in resumed.callback_handler.callbacks if isinstance(c, LisaCallback))
        assert lisa.history[0] == (at, saved["active"]) and saved["switch"] == at // 3


@pytest.fixture
def saved_run(tiny_model_dir, data_dir, tmp_path):
    """A run killed after checkpoint-4 (everything else removed), and a function making its resume config."""
    out = tmp_path / "run"
    train(make_cfg(tiny_model_dir, data_dir, out, tmp_path / "cache", num_train_epochs=1))
    for name in os.listdir(out):
        if name != "checkpoint-4":
            shutil.rmtree(out / name) if os.path.isdir(out / name) else os.remove(out / name)
    return lambda **kw: make_cfg(tiny_model_dir, data_dir, out, tmp_path / "cache", num_train_epochs=1,
                                 resume_from_checkpoint="auto", **kw)


def test_a_resume_with_a_changed_config_is_refused_naming_each_change(saved_run):
    with pytest.raises(TuneforgeError) as err:
        run.train(saved_run(learning_rate=2e-2, lora_rank=8))
    text = str(err.value)
    assert "learning_rate: 0.01 -> 0.02" in text and "lora_rank: 4 -> 8" in text and "lora_alpha: 8 -> 16" in text
    assert "ignore_data_skip: true" in text and err.value.key == "resume_from_checkpoint"


def test_a_resume_with_a_changed_dataset_is_refused_unless_ignore_data_skip(saved_run, data_dir, caplog):
    path = os.path.join(data_dir, "alpaca.json")
    rows = json.load(open(path))
    rows[0]["output"] = "I am Forge, changed."
    json.dump(rows, open(path, "w"))
    with pytest.raises(TuneforgeError, match=r"training data \(tokenized rows, in order\): \w+ -> \w+"):
        run.train(saved_run())
    with caplog.at_level(logging.WARNING):
        metrics = run.train(saved_run(ignore_data_skip=True))
    assert "ignore_data_skip: true: resuming" in caplog.text and "training data" in caplog.text
    assert metrics["train_loss"] > 0


def test_safe_keys_may_change_and_a_new_length_is_logged(saved_run, caplog):
    with caplog.at_level(logging.WARNING):
        run.train(saved_run(logging_steps=2, save_steps=5, max_steps=7, dataloader_num_workers=0, plot_loss=False))
    assert "max_steps: -1 -> 7: the learning-rate schedule now runs to the new length" in caplog.text


def test_the_exactness_check_catches_a_sampler_epoch_reset_on_resume(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """The accelerate bug that reset the sampler's epoch on a mid-epoch resume, put back: the remaining losses differ,
    so the test above would fail on it (each epoch's order differs; epoch 2 replayed in epoch 1's order does not match)."""
    import accelerate.data_loader as adl

    kw = {"packing": False}
    train(make_cfg(tiny_model_dir, data_dir, tmp_path / "full", tmp_path / "cache", **kw))
    shutil.copytree(tmp_path / "full" / "checkpoint-8", tmp_path / "part" / "checkpoint-8")
    reset = adl.SeedableRandomSampler.set_epoch
    monkeypatch.setattr(adl.SeedableRandomSampler, "set_epoch", lambda self, epoch: reset(self, 0))
    train(make_cfg(tiny_model_dir, data_dir, tmp_path / "part", tmp_path / "cache", resume_from_checkpoint="auto", **kw))
    after, expected = losses(tmp_path / "part"), losses(tmp_path / "full")
    assert sorted(after) == [9, 10, 11, 12]
    assert [after[s] for s in after] != pytest.approx([expected[s] for s in after], rel=1e-6, abs=0)


def test_the_best_checkpoint_points_at_the_published_folder_and_survives_the_limit(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    trainer = train(make_cfg(tiny_model_dir, data_dir, out, tmp_path / "cache", val_size=0.25, eval_strategy="steps",
                             eval_steps=2, save_steps=2, max_steps=6, load_best_model_at_end=True, metric_for_best_model="loss",
                             save_total_limit=1))
    best = trainer.state.best_model_checkpoint
    assert os.path.dirname(best) == str(out) and os.path.basename(best).startswith("checkpoint-")
    assert ckpt.is_complete(best)[0]
    saved = json.load(open(os.path.join(best, "trainer_state.json")))
    assert saved["best_model_checkpoint"] == best
    assert not any(d.startswith(".tmp-") for d in os.listdir(out))


def test_lisa_keeps_the_checkpoints_layers_for_the_interval_in_progress(tiny_model_dir, caplog):
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from tuneforge.methods.lisa import LisaCallback, active_layers

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    derived = active_layers(2, 1, 42, 1)
    other = [1 - derived[0]]
    cb = LisaCallback(k=1, interval=3, seed=42)
    cb.restore_checkpoint_state({"switch": 1, "interval": 3, "active": other})
    cb.on_train_begin(None, SimpleNamespace(global_step=4), None, model=model)
    assert cb.history == [(4, other)] and "keeping the checkpoint's until the next switch" in caplog.text
    assert [i for i, layer in enumerate(model.model.layers) if next(layer.parameters()).requires_grad] == other
    cb.on_step_begin(None, SimpleNamespace(global_step=6), None, model=model)
    assert cb.history[-1] == (6, active_layers(2, 1, 42, 2))  # the next switch samples as usual


def test_a_save_removes_only_what_an_interrupted_save_left(tmp_path):
    for name in (".tmp-checkpoint-3", ".old-checkpoint-3-0123456789ab", ".tmp-cache-x", "checkpoint-4", ".tmp-checkpoint-x"):
        (tmp_path / name).mkdir()
    assert sorted(ckpt.clean_staging(str(tmp_path))) == [".old-checkpoint-3-0123456789ab", ".tmp-checkpoint-3"]
    assert sorted(os.listdir(tmp_path)) == [".tmp-cache-x", ".tmp-checkpoint-x", "checkpoint-4"]
