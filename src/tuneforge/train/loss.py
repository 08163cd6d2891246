"""Causal-LM loss computed only where labels are supervised, in vocabulary chunks.

A chat example's prompt (system prompt, question, template tokens) carries no loss, yet a plain forward
projects every position onto the vocabulary (49k columns for SmolLM2) and keeps those logits, their
log-softmax and their gradient alive until backward. Here the LM head sees only the supervised rows, and
`linear_cross_entropy` never materialises more than `chunk_rows` rows of logits: it computes each chunk's
loss and gradients in the forward pass and hands the gradients back in backward. The result is the
model's own loss (sum over supervised tokens divided by their count, or by `num_items_in_batch`).
"""

from contextlib import contextmanager

import torch
from torch import nn

from tuneforge.data.templates import IGNORE_INDEX
from tuneforge.models.heads import CHUNK_BYTES, PLAIN_HEAD_MODEL_TYPES


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Targets aligned with positions: position i predicts labels[i + 1]; the last position predicts nothing."""
    return nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T + bias, target_i), chunk by chunk; gradients are made in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows, grads):
        need_h, need_w, need_b = grads
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            h = hidden[start:start + chunk_rows]
            t = targets[start:start + chunk_rows]
            logits = nn.functional.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if need_h or need_w or need_b:
                # d(sum CE)/d logits = softmax - one_hot, built in place over the chunk's logits
                dlogits = logits.sub_(lse[:, None]).exp_()
                dlogits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                if need_b:
                    grad_b += dlogits.sum(0)
                dlogits = dlogits.to(h.dtype)
                if need_h:
                    grad_h[start:start + chunk_rows] = dlogits @ weight
                if need_w:
                    grad_w.addmm_(dlogits.t().float(), h.float())
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in (grad_h, grad_w, grad_b)))
        ctx.has = grads
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        need_h, need_w, need_b = ctx.has
        return (grad_h * grad_out.to(grad_h.dtype) if need_h else None,
                (grad_w * grad_out).to(ctx.dtypes[0]) if need_w else None,
                (grad_b * grad_out).to(ctx.dtypes[1]) if need_b else None,
                None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T + bias` against `targets` without holding the logits.

    Args:
        hidden: (N, H) rows that carry a label.
        weight: (V, H) output projection (the LM head, possibly tied to the embeddings).
        bias: (V,) or None.
        targets: (N,) token ids.
        chunk_rows: rows per chunk; default keeps a chunk's fp32 logits near 32 MiB.
    """
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_BYTES // (4 * weight.shape[0]))
    on = torch.is_grad_enabled()
    grads = (on and hidden.requires_grad, on and weight.requires_grad, on and bias is not None and bias.requires_grad)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_rows, grads)


# Heads that are exactly `logits = lm_head(hidden)`: no soft-capping, scaling or router losses after it.


def fused_head_ok(lm_head: nn.Module, config) -> bool:
    """Whether the chunked path may replace the head: a plain nn.Linear on a model type known to add nothing after it,
    with its whole weight on this process (it is read after the head's forward, where a sharded one is not whole)."""
    if not (type(lm_head) is nn.Linear and getattr(config, "model_type", None) in PLAIN_HEAD_MODEL_TYPES):
        return False
    from tuneforge.distributed import is_sharded, log_sharded_fallback

    if is_sharded(lm_head.weight) or lm_head.weight.shape != (lm_head.out_features, lm_head.in_features):
        log_sharded_fallback("the fused LM-head loss")
        return False
    return True


@contextmanager
def select_head_rows(lm_head: nn.Module, keep: torch.Tensor, fused: bool):
    """While active, the LM head sees only the rows where `keep` is True.

    `keep` is (batch, seq) over the real tokens; virtual tokens a prompt-learning adapter puts in front are skipped.
    With `fused`, the head gets zero rows (the caller computes the loss from `captured["hidden"]`); otherwise it
    projects the kept rows and the model returns logits of shape (1, N, vocab).
    """
    captured = {}

    def hook(module, args):
        hidden = args[0]
        extra = hidden.shape[1] - keep.shape[1]
        if extra < 0 or hidden.shape[0] != keep.shape[0]:
            captured["mismatch"] = tuple(hidden.shape)
            return None
        rows = hidden[:, extra:][keep]
        captured["hidden"] = rows
        return ((rows[:0] if fused else rows)[None], *args[1:])

    handle = lm_head.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
