"""`tuneforge train` on a tiny random model: artifacts, refusal to overwrite, resume, caching, packing."""

import json
import os

import pytest
import torch
import yaml

from tuneforge.cli import main


def train(tiny_model_dir, data_dir, out, *extra, cache=None):
    args = ["train", f"model_name_or_path={tiny_model_dir}", "dataset=my_alpaca,my_chat", f"dataset_dir={data_dir}",
            f"output_dir={out}", "template=chatml", "cutoff_len=64", "per_device_train_batch_size=4", "max_steps=6",
            "logging_steps=1", "learning_rate=1e-2", "save_strategy=no", f"cache_dir={cache or os.path.join(out, '..', 'cache')}",
            "lora_rank=4", *extra]
    return main(args)


@pytest.fixture
def run_dir(tmp_path):
    return str(tmp_path / "run")


def test_lora_run_writes_every_artifact(tiny_model_dir, data_dir, run_dir):
    assert train(tiny_model_dir, data_dir, run_dir) == 0
    files = set(os.listdir(run_dir))
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                 "tuneforge_config.yaml", "trainer_log.jsonl", "training_loss.png", "all_results.json"):
        assert name in files, name
    with open(os.path.join(run_dir, "all_results.json")) as fh:
        results = json.load(fh)
    assert results["train_tokens_per_second"] > 0 and results["train_tokens"] > 0
    assert results["trainable_params"] < results["total_params"]
    with open(os.path.join(run_dir, "trainer_log.jsonl")) as fh:
        steps = [json.loads(line) for line in fh]
    assert [r["step"] for r in steps if "loss" in r] == [1, 2, 3, 4, 5, 6]
    losses = [r["loss"] for r in steps if "loss" in r]
    assert losses[-1] < losses[0]


def test_saved_tokenizer_carries_the_training_template(tiny_model_dir, data_dir, run_dir):
    from transformers import AutoTokenizer

    from tuneforge.data.templates import CHATML

    train(tiny_model_dir, data_dir, run_dir)
    assert AutoTokenizer.from_pretrained(run_dir).chat_template == CHATML


def test_saved_config_reruns_the_same_run(tiny_model_dir, data_dir, run_dir, tmp_path):
    train(tiny_model_dir, data_dir, run_dir)
    again = str(tmp_path / "again")
    assert main(["train", os.path.join(run_dir, "tuneforge_config.yaml"), f"output_dir={again}"]) == 0
    first = [json.loads(x)["loss"] for x in open(os.path.join(run_dir, "trainer_log.jsonl")) if '"loss"' in x]
    second = [json.loads(x)["loss"] for x in open(os.path.join(again, "trainer_log.jsonl")) if '"loss"' in x]
    assert first == pytest.approx(second, rel=1e-5)


def test_finished_run_is_not_overwritten(tiny_model_dir, data_dir, run_dir, capsys):
    train(tiny_model_dir, data_dir, run_dir)
    stamp = os.path.getmtime(os.path.join(run_dir, "adapter_model.safetensors"))
    assert train(tiny_model_dir, data_dir, run_dir) == 2
    assert "holds a finished run" in capsys.readouterr().err
    assert os.path.getmtime(os.path.join(run_dir, "adapter_model.safetensors")) == stamp
    assert train(tiny_model_dir, data_dir, run_dir, "overwrite_output_dir=true") == 0


def test_resume_auto_continues_from_the_newest_checkpoint(tiny_model_dir, data_dir, run_dir):
    import shutil

    assert train(tiny_model_dir, data_dir, run_dir, "save_strategy=steps", "save_steps=3") == 0
    full = [json.loads(x) for x in open(os.path.join(run_dir, "trainer_log.jsonl"))]
    # simulate a run killed after step 3: drop what came after the first checkpoint
    for name in os.listdir(run_dir):
        if name not in ("checkpoint-3",):
            path = os.path.join(run_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    assert train(tiny_model_dir, data_dir, run_dir, "save_strategy=steps", "save_steps=3", "resume_from_checkpoint=auto") == 0
    resumed = [json.loads(x) for x in open(os.path.join(run_dir, "trainer_log.jsonl"))]
    assert [r["step"] for r in resumed if "loss" in r] == [4, 5, 6]
    assert [r["loss"] for r in resumed if "loss" in r] == pytest.approx([r["loss"] for r in full if "loss" in r][3:], rel=1e-4)


def test_tokenization_is_cached_and_reused(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    from tuneforge import config
    from tuneforge.data import apply_template, build
    from tuneforge.models import load_tokenizer

    cfg = config.load(None, {"output_dir": "o", "dataset": "my_alpaca", "dataset_dir": data_dir, "template": "chatml",
                             "model_name_or_path": tiny_model_dir})
    tok = load_tokenizer(tiny_model_dir, cfg.model)
    apply_template(tok, "chatml")
    cache = str(tmp_path / "cache")
    first, _ = build(cfg.data, tok, cache)
    assert len(os.listdir(os.path.join(cache, "tokenized"))) == 1
    calls = []
    import tuneforge.data.pipeline as pipeline

    original = pipeline.load_conversations
    monkeypatch.setattr(pipeline, "load_conversations", lambda *a, **k: calls.append(1) or original(*a, **k))
    second, _ = build(cfg.data, tok, cache)
    assert calls == [] and second["train"]["input_ids"] == first["train"]["input_ids"]
    cfg.data.cutoff_len = 16  # a changed setting is a new cache entry
    build(cfg.data, tok, cache)
    assert calls == [1]


def test_val_size_adds_eval_loss(tiny_model_dir, data_dir, run_dir):
    assert train(tiny_model_dir, data_dir, run_dir, "val_size=0.2") == 0
    results = json.load(open(os.path.join(run_dir, "all_results.json")))
    assert "eval_loss" in results


@pytest.mark.parametrize("method", ["full", "freeze"])
def test_full_and_freeze_runs_save_a_model(tiny_model_dir, data_dir, run_dir, method):
    from transformers import AutoModelForCausalLM

    assert train(tiny_model_dir, data_dir, run_dir, f"finetuning_type={method}", "freeze_trainable_layers=1") == 0
    assert os.path.isfile(os.path.join(run_dir, "model.safetensors"))
    AutoModelForCausalLM.from_pretrained(run_dir)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "sdpa_packed"])
def test_packing_gives_each_example_its_own_logits(tiny_model_dir, tiny_tokenizer, attn, monkeypatch):
    from transformers import AutoModelForCausalLM
    from transformers.integrations import sdpa_attention

    from tuneforge.data import build_collator, encode
    from tuneforge.models import packed_attention

    packed_attention.register()
    calls = []
    real = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward",
                        lambda *a, **k: calls.append(a[2].shape[2]) or real(*a, **k))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn).eval()
    model.config.use_cache = False  # as in training: a KV cache would switch off packed-sequence masks
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for q, a in [("Who are you?", "I am Forge."), ("What is 2 + 3?", "5"), ("hi", "hello there, friend")]]
    feats = []
    for c in convs:
        ids, labels = encode(tiny_tokenizer, c, 64)
        feats.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    packed = build_collator(tiny_tokenizer, packing=True)(feats)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    with torch.no_grad():
        logits = model(**{k: v for k, v in packed.items() if k != "labels"}).logits[0]
        if attn == "sdpa_packed":  # one SDPA call per example and layer, each on that example's tokens only
            assert calls == [len(f["input_ids"]) for f in feats] * model.config.num_hidden_layers
        start = 0
        for f in feats:
            n = len(f["input_ids"])
            alone = model(input_ids=torch.tensor([f["input_ids"]])).logits[0]
            assert torch.allclose(logits[start:start + n], alone, atol=1e-5), "packed example attends across examples"
            start += n


def test_packed_training_run(tiny_model_dir, data_dir, run_dir):
    assert train(tiny_model_dir, data_dir, run_dir, "packing=true") == 0
    results = json.load(open(os.path.join(run_dir, "all_results.json")))
    assert results["train_tokens_per_second"] > 0


def _losses(run):
    return [json.loads(line)["loss"] for line in open(os.path.join(run, "trainer_log.jsonl")) if '"loss"' in line]


@pytest.mark.parametrize("method", [["finetuning_type=lora"], ["finetuning_type=full", "learning_rate=1e-3"]])
def test_fast_paths_train_like_the_plain_path(tiny_model_dir, data_dir, tmp_path, method):
    """Packing + per-example SDPA + supervised-only logits follow the padded, full-logits run step for step."""
    fast, plain = str(tmp_path / "fast"), str(tmp_path / "plain")
    assert train(tiny_model_dir, data_dir, fast, *method) == 0
    assert train(tiny_model_dir, data_dir, plain, *method, "packing=false", "supervised_logits_only=false") == 0
    a, b = _losses(fast), _losses(plain)
    assert len(a) == len(b) == 6 and a[0] > 0
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
    cfg = yaml.safe_load(open(os.path.join(fast, "tuneforge_config.yaml")))
    assert cfg.get("packing") is True or cfg.get("data", {}).get("packing") is True
