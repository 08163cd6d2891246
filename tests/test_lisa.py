"""LISA: exactly the sampled layers train in each interval, sampling follows the seed, resume restores the
active set, and optimizer state stays bounded over many switches (unlike the never-released variant)."""

import json
import os

import pytest
import torch
from transformers import TrainerCallback

from tuneforge.methods.lisa import LisaCallback, active_layers
from tuneforge import run
from test_methods_efficient import make_cfg


class GradRecorder(TrainerCallback):
    """Before each optimizer step: which decoder layers have gradients, and the optimizer-state bytes."""

    def __init__(self):
        self.layers_with_grad, self.state_bytes = [], []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        self.layers_with_grad.append(sorted({i for i, layer in enumerate(model.model.layers)
                                             if any(p.grad is not None for p in layer.parameters())}))
        self.embed_grad = model.model.embed_tokens.weight.grad is not None

    def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
        inner = getattr(optimizer, "optimizer", optimizer)
        self.state_bytes.append(sum(t.numel() * t.element_size() for st in inner.state.values()
                                    for t in st.values() if torch.is_tensor(t)))


def lisa_trainer(wide_model_dir, data_dir, tmp_path, **kw):
    cfg = make_cfg(wide_model_dir, data_dir, tmp_path, finetuning_type="lisa", learning_rate=1e-3, **kw)
    trainer, resume, _ = run.build(cfg)
    rec = GradRecorder()
    trainer.add_callback(rec)
    lisa = next(c for c in trainer.callback_handler.callbacks if isinstance(c, LisaCallback))
    return trainer, rec, lisa, cfg


def test_exactly_the_sampled_layers_have_gradients_in_each_interval(wide_model_dir, data_dir, tmp_path):
    trainer, rec, lisa, cfg = lisa_trainer(wide_model_dir, data_dir, tmp_path, lisa_layers=2, lisa_interval=2, max_steps=8)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    expected = [active_layers(6, 2, cfg.data.seed, step // 2) for step in range(8)]
    assert rec.layers_with_grad == expected
    assert rec.embed_grad
    assert len({tuple(x) for x in expected}) > 1  # it did switch
    used = {i for x in expected for i in x}
    for i, layer in enumerate(trainer.model.model.layers):
        same = all(torch.equal(before[f"model.layers.{i}.{n}"], p) for n, p in layer.named_parameters())
        assert same == (i not in used), f"layer {i}"
    assert not torch.equal(before["model.embed_tokens.weight"], trainer.model.model.embed_tokens.weight)


def test_embeddings_can_be_frozen(wide_model_dir, data_dir, tmp_path):
    trainer, rec, _, _ = lisa_trainer(wide_model_dir, data_dir, tmp_path, lisa_train_embeddings=False, max_steps=2)
    trainer.train()
    assert not rec.embed_grad
    assert all(not p.requires_grad for n, p in trainer.model.named_parameters() if not n.startswith("model.layers."))


def test_sampling_follows_the_seed():
    assert active_layers(30, 2, 42, 3) == active_layers(30, 2, 42, 3)
    assert [active_layers(30, 2, 42, k) for k in range(10)] != [active_layers(30, 2, 7, k) for k in range(10)]
    seen = [active_layers(30, 4, 1, k) for k in range(200)]
    assert all(len(set(s)) == 4 for s in seen)  # without replacement
    counts = torch.bincount(torch.tensor([i for s in seen for i in s]), minlength=30)
    assert counts.min() > 10  # uniform: every layer gets picked (expected ~27 each)


def test_optimizer_state_stays_bounded_unlike_the_never_released_variant(wide_model_dir, data_dir, tmp_path):
    peaks = {}
    for release in (True, False):
        trainer, rec, lisa, _ = lisa_trainer(wide_model_dir, data_dir, tmp_path / str(release), lisa_layers=1, lisa_interval=1,
                                             max_steps=12, lisa_train_embeddings=False)
        lisa.release_state = release
        trainer.train()
        peaks[release] = rec.state_bytes
    layer_bytes = sum(p.numel() for p in trainer.model.model.layers[0].parameters()) * 4 * 2
    # released: at most one layer's AdamW state (+ step counters); never released: grows with every new layer
    assert max(peaks[True]) <= layer_bytes + 1024
    assert peaks[False][-1] >= 3 * layer_bytes > max(peaks[True])


def test_resume_restores_the_active_layers_and_continues_the_same_run(wide_model_dir, data_dir, tmp_path):
    from tuneforge.cli import main

    out = str(tmp_path / "run")
    common = [f"model_name_or_path={wide_model_dir}", "dataset=my_alpaca,my_chat", f"dataset_dir={data_dir}", f"output_dir={out}",
              "template=chatml", "cutoff_len=64", "per_device_train_batch_size=4", "max_steps=8", "logging_steps=1",
              "learning_rate=1e-3", "finetuning_type=lisa", "lisa_layers=2", "lisa_interval=3", "save_strategy=steps",
              "save_steps=4", f"cache_dir={tmp_path}/cache"]
    assert main(["train", *common]) == 0
    full = [json.loads(x) for x in open(os.path.join(out, "trainer_log.jsonl")) if '"loss"' in x]
    for name in os.listdir(out):  # keep only the step-4 checkpoint, as after a crash
        if name != "checkpoint-4":
            path = os.path.join(out, name)
            __import__("shutil").rmtree(path) if os.path.isdir(path) else os.remove(path)
    assert main(["train", *common, "resume_from_checkpoint=auto"]) == 0
    resumed = [json.loads(x) for x in open(os.path.join(out, "trainer_log.jsonl")) if '"loss"' in x]
    assert [r["step"] for r in resumed] == [5, 6, 7, 8]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full][4:], rel=1e-4)


def test_grad_accumulation_switches_only_at_optimizer_steps(wide_model_dir, data_dir, tmp_path):
    trainer, rec, lisa, cfg = lisa_trainer(wide_model_dir, data_dir, tmp_path, lisa_layers=1, lisa_interval=1, max_steps=4,
                                           gradient_accumulation_steps=2, per_device_train_batch_size=2)
    trainer.train()
    assert rec.layers_with_grad == [active_layers(6, 1, cfg.data.seed, s) for s in range(4)]
    assert [step for step, _ in lisa.history] == [0, 1, 2, 3]
