"""ORPO and SimPO for stage dpo (`pref_loss: orpo | simpo`): both score a reply by the policy's mean log-probability
per token, so no reference model is loaded or run, whatever the method. TRL 1.16's DPOTrainer has neither loss and
builds a reference for full fine-tuning; trl.experimental's ORPO/CPO trainers tokenize their own way. So this is a
small Trainer on TRL's preference batches (DataCollatorForPreference) and its chunked log-prob head.

    ORPO (Hong et al. 2024):  -c + beta * -logsigmoid(log odds(c) - log odds(r)),  log odds(p) = p - log(1 - e^p)
    SimPO (Meng et al. 2024): -logsigmoid(beta * (c - r) - simpo_gamma)
c and r are the mean per-token log-probabilities of the chosen and rejected replies; pref_ftx adds pref_ftx * -c.
These follow LLaMA-Factory's formulas, so its pref_beta and simpo_gamma values carry over."""

import functools


def collator(tokenizer, cfg):
    """TRL's preference collator: a batch of b pairs becomes 2b rows (chosen first) with a completion mask."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    return DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=cfg.train.args.get("max_length"))


def pair_losses(loss_type: str, chosen, rejected, beta: float, gamma: float, ftx: float):
    """Per-pair ORPO or SimPO loss from mean per-token log-probabilities (tensors of shape [pairs])."""
    import torch
    import torch.nn.functional as F

    if loss_type == "orpo":
        def log_odds(p):
            return p - torch.log1p(-torch.exp(p).clamp(max=1 - 1e-6))

        losses = -chosen + beta * -F.logsigmoid(log_odds(chosen) - log_odds(rejected))
    else:
        losses = -F.logsigmoid(beta * (chosen - rejected) - gamma)
    return losses + ftx * -chosen if ftx else losses


@functools.cache
def trainer_class() -> type:
    import torch
    from accelerate.utils import is_peft_model
    from transformers import Trainer
    from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

    class ReferenceFreeTrainer(Trainer):
        """ORPO or SimPO (args.loss_type) on preference batches: one forward over chosen and rejected rows, the loss
        from the policy's own mean log-probabilities (see the module docstring); logs rewards/*, logps/* like DPO."""

        loss_is_scaled_for_ga = False  # the loss is a batch mean; the Trainer divides by accumulation steps

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.args.disable_dropout:
                disable_dropout_in_model(self.model)
            base = self.model.get_base_model() if is_peft_model(self.model) else self.model
            add_fused_lm_head(base)  # per-token log-probs in chunks, without the full logits
            self._metrics = {"train": {}, "eval": {}}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mask = inputs["completion_mask"]
            labels = inputs["input_ids"].masked_fill(mask == 0, -100)
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                        use_cache=False, fused_lm_head=True)
            shift = mask[:, 1:]
            per_token = out.log_probs[:, -shift.size(1):]  # prompt tuning prepends virtual tokens
            mean = (per_token * shift).sum(1) / shift.sum(1).clamp(min=1)
            chosen, rejected = mean.chunk(2)
            a = self.args
            loss = pair_losses(a.loss_type[0], chosen, rejected, a.beta, a.simpo_gamma, a.pref_ftx).mean()
            self._record(chosen.detach(), rejected.detach())
            return (loss, out) if return_outputs else loss

        def _record(self, chosen, rejected):
            mode = "train" if self.model.training else "eval"
            beta = self.args.beta
            values = {"rewards/chosen": beta * chosen, "rewards/rejected": beta * rejected,
                      "rewards/margins": beta * (chosen - rejected), "rewards/accuracies": (chosen > rejected).float(),
                      "logps/chosen": chosen, "logps/rejected": rejected}
            for k, v in values.items():
                self._metrics[mode].setdefault(k, []).append(self.accelerator.gather_for_metrics(v).mean().item())

        def log(self, logs, start_time=None):
            mode = "train" if self.model.training else "eval"
            prefix = "eval_" if mode == "eval" else ""
            logs.update({prefix + k: sum(v) / len(v) for k, v in self._metrics[mode].items()})
            self._metrics[mode] = {}
            super().log(logs, start_time)

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None

    return ReferenceFreeTrainer
