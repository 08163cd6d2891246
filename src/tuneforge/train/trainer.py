"""The Hugging Face Trainer with a leaner causal-LM loss: logits only where labels are supervised."""

import logging

import torch
from transformers import Trainer

from tuneforge.train.checkpoints import AtomicCheckpoints
from tuneforge.train.loss import IGNORE_INDEX, fused_head_ok, linear_cross_entropy, select_head_rows, shift_labels

log = logging.getLogger(__name__)


class SupervisedLossTrainer(AtomicCheckpoints, Trainer):
    """`compute_loss` projects only supervised positions onto the vocabulary (chunked, for plain heads).

    The value equals the model's own loss on the same batch (tests hold it to 1e-5); gradients flow through the
    model's forward, so DDP, PEFT adapters and gradient checkpointing behave as usual. Falls back to the
    standard path for evaluation with outputs, label smoothing, custom loss functions, or a head it cannot see.
    Checkpoints are written atomically (AtomicCheckpoints, train/checkpoints.py).
    """

    supervised_logits_only = True
    _fallback_reason: str | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if (not self.supervised_logits_only or return_outputs or self._fallback_reason or "labels" not in inputs
                or self.label_smoother is not None or self.compute_loss_func is not None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        unwrapped = self.accelerator.unwrap_model(model)
        lm_head = unwrapped.get_output_embeddings()
        if lm_head is None:
            return self._fall_back("the model has no output embeddings", model, inputs, num_items_in_batch)
        labels = inputs["labels"]
        targets = inputs["shift_labels"] if "shift_labels" in inputs else shift_labels(labels)
        keep = targets != IGNORE_INDEX
        fused = fused_head_ok(lm_head, getattr(unwrapped, "config", None))
        model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
        with select_head_rows(lm_head, keep, fused) as captured:
            outputs = model(**model_inputs, use_cache=False)
        if "hidden" not in captured:
            why = f"hidden states of shape {captured['mismatch']}" if "mismatch" in captured else "the LM head was not called"
            return self._fall_back(f"labels {tuple(keep.shape)} do not line up with the head's input ({why})",
                                   model, inputs, num_items_in_batch)
        wanted = targets[keep]
        if fused:
            total = linear_cross_entropy(captured["hidden"], lm_head.weight, lm_head.bias, wanted)
        else:
            logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
            if logits.shape[-2] != wanted.shape[0]:
                return self._fall_back(f"the model reshaped the selected logits to {tuple(logits.shape)}",
                                       model, inputs, num_items_in_batch)
            total = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), wanted, reduction="sum")
        if num_items_in_batch is not None:
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
                loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
        else:
            loss = total / wanted.shape[0] if wanted.shape[0] else total
        return loss

    def _fall_back(self, reason, model, inputs, num_items_in_batch):
        self._fallback_reason = reason
        log.warning("supervised-only logits disabled for this run (%s); using the model's full loss", reason)
        return super().compute_loss(model, inputs, False, num_items_in_batch)
