"""Supervised-only logits and the chunked cross-entropy give the model's own loss and gradients."""

import pytest
import torch

from tuneforge.train.loss import linear_cross_entropy, select_head_rows, shift_labels
from tuneforge.train.trainer import SupervisedLossTrainer


def test_linear_cross_entropy_matches_full_logits_in_value_and_gradients():
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    b = torch.randn(50, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    ref = torch.nn.functional.cross_entropy(h @ w.T + b, t, reduction="sum")
    ref.backward()
    ref_grads = [x.grad.clone() for x in (h, w, b)]
    for x in (h, w, b):
        x.grad = None
    out = linear_cross_entropy(h, w, b, t, chunk_rows=5)  # 8 chunks, the last one short
    (2.0 * out).backward()
    assert abs(out.item() - ref.item()) < 1e-4 * abs(ref.item())
    for got, want in zip((h.grad, w.grad, b.grad), ref_grads):
        torch.testing.assert_close(got, 2.0 * want, rtol=1e-5, atol=1e-5)


def test_linear_cross_entropy_skips_gradients_nobody_needs():
    h, w = torch.randn(4, 8, requires_grad=True), torch.randn(10, 8)
    out = linear_cross_entropy(h, w, None, torch.tensor([1, 2, 3, 4]))
    out.backward()
    assert h.grad is not None and w.grad is None
    with torch.no_grad():
        assert linear_cross_entropy(h, w, None, torch.tensor([1, 2, 3, 4])).item() == pytest.approx(out.item())


def _batch(vocab, pad_first_row=True):
    torch.manual_seed(1)
    ids = torch.randint(5, vocab, (3, 12))
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt carries no loss
    mask = torch.ones_like(ids)
    if pad_first_row:
        mask[0, 9:] = 0
        labels[0, 9:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class _Stub:
    """Just what compute_loss reads from a Trainer."""

    def __init__(self, args_n_gpu=1):
        from types import SimpleNamespace

        self.accelerator = SimpleNamespace(unwrap_model=lambda m: m, num_processes=1)
        self.args = SimpleNamespace(average_tokens_across_devices=False, n_gpu=args_n_gpu)
        self.label_smoother = None
        self.compute_loss_func = None
        self.model_accepts_loss_kwargs = True
        self._fallback_reason = None
        self.supervised_logits_only = True


def _loss(model, batch, num_items=None):
    return SupervisedLossTrainer.compute_loss(_Stub(), model, dict(batch), num_items_in_batch=num_items)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("num_items", [None, 40])
def test_trainer_loss_equals_model_loss_and_gradients(tmp_path, tie, num_items):
    from transformers import AutoModelForCausalLM

    from tests.conftest import make_model_dir

    model = AutoModelForCausalLM.from_pretrained(make_model_dir(tmp_path / "m", tie=tie), torch_dtype=torch.float32)
    batch = _batch(model.config.vocab_size)
    extra = {"num_items_in_batch": torch.tensor(num_items)} if num_items else {}
    ref = model(**batch, **extra).loss
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got = _loss(model, batch, torch.tensor(num_items) if num_items else None)
    got.backward()
    assert abs(got.item() - ref.item()) < 1e-5
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)


def test_lm_head_sees_only_supervised_rows(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = _batch(model.config.vocab_size)
    keep = shift_labels(batch["labels"]) != -100
    seen = []
    model.lm_head.register_forward_hook(lambda m, a, out: seen.append(tuple(a[0].shape)))
    with select_head_rows(model.lm_head, keep, fused=False):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    n = int(keep.sum())
    assert 0 < n < keep.numel()
    assert seen == [(1, n, model.config.hidden_size)] and out.logits.shape[1] == n
    with select_head_rows(model.lm_head, keep, fused=True) as captured:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert seen[-1] == (1, 0, model.config.hidden_size) and captured["hidden"].shape == (n, model.config.hidden_size)


def test_lora_and_prompt_tuning_losses_match(tiny_model_dir):
    """PEFT wrappers: LoRA (head untouched), prompt tuning (virtual tokens in front of the real ones), prefix tuning."""
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for peft_cfg in (LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
                     PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
                     PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)):
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), peft_cfg)
        batch = _batch(model.config.vocab_size)
        ref = model(**batch).loss
        got = _loss(model, batch)
        assert abs(got.item() - ref.item()) < 1e-5, type(peft_cfg).__name__


def test_packed_batch_loss_matches(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from tuneforge.data.collator import build_collator

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.use_cache = False
    feats = [{"input_ids": list(range(5, 5 + n)), "labels": [-100] * 3 + list(range(8, 8 + n - 3))} for n in (7, 11, 4)]
    packed = build_collator(tiny_tokenizer, packing=True)(feats)
    ref = model(**packed).loss
    assert abs(_loss(model, packed).item() - ref.item()) < 1e-5
