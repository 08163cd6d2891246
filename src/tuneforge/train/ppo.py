"""PPO's training loop with the Hugging Face Trainer's surface (TrainerState, callbacks and logs, optimizer and
scheduler, checkpoints, save_model/save_state), so the run path and its callbacks work unchanged. The loop is our own:
one PPO step is a rollout followed by several optimizer updates, which the Trainer's one-batch-one-update loop cannot
express (TRL 1.x ships no PPO trainer). The arithmetic is train/ppo_math.py."""

import copy
import math
import os
import time
from collections import defaultdict

import torch
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_callback import ExportableState, TrainerState
from transformers.trainer_utils import TrainOutput, speed_metrics
from trl.trainer.utils import selective_log_softmax

from tuneforge.train import ppo_math

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(torch.nn.Module):
    """A value per position from the policy's last hidden state, in fp32. Zero-initialised, so the first advantages
    are the rewards-to-go and the policy is not pushed by a random critic."""

    def __init__(self, hidden: int):
        super().__init__()
        self.summary = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.summary.weight)
        torch.nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.float()).squeeze(-1)


def reply_mask(reply: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 on each reply token up to and including the first end-of-sequence token, 0 after it."""
    is_eos = torch.isin(reply, torch.tensor(eos_ids, device=reply.device)).long()
    return ((is_eos.cumsum(1) - is_eos) == 0).long()


class PPOTrainer(Trainer):
    """PPO with a value head; `train()` runs `max_steps` PPO steps (or num_train_epochs passes over the prompts).

    One step:
      1. rollout: per_device_train_batch_size x gradient_accumulation_steps x ppo_buffer_size prompts; the policy samples
         replies (generation keys: max_new_tokens, temperature, top_p, top_k, repetition_penalty); log-probabilities of
         policy and reference (at the sampling temperature), values, and the reward model's score of each reply;
      2. ppo_score_norm: scores normalised by their running mean and std;
      3. per-token rewards -kl_coef x (log p - log p_ref), the score added on the last reply token; ppo_whiten_rewards
         whitens them; advantages by GAE on the values, whitened;
      4. ppo_epochs passes over the rollout's micro-batches in random order, an optimizer update every
         gradient_accumulation_steps of them: clipped policy loss + 0.1 x clipped value loss;
      5. the KL coefficient adapts toward ppo_target; the scheduler steps once.
    Logged per step: loss, policy_loss, value_loss, reward (mean raw score), kl, kl_coef, response_length, ...
    `evaluate()` reports the mean score of greedy replies to the held-out prompts (eval_reward).

    Args (besides the Trainer's):
        value_head: the ValueHead (trained with the policy, saved as value_head.safetensors).
        reward: has `score(conversations) -> list[float]` (models.reward: the shared adapter or a separate reward model).
        reference: a frozen reference model, or None: the policy (a PeftModel) with its adapters disabled.
        generation_config: the rollouts' sampling settings.
    """

    def __init__(self, *args, value_head, reward, reference, generation_config, **kwargs):
        super().__init__(*args, **kwargs)
        self.value_head = value_head.to(self.args.device)
        self.reward, self.reference, self.generation_config = reward, reference, generation_config
        for model in (reference, getattr(reward, "model", None)):  # separate models (the shared reward's is the policy)
            if model is not None:
                model.to(self.args.device)
        self.temperature = generation_config.temperature if generation_config.do_sample else 1.0
        self.kl_ctl = ppo_math.AdaptiveKL(self.args.ppo_target)
        self.score_moments = ppo_math.RunningMoments()

    # ---------------------------------------------------------------- optimizer: the policy's and the value head's

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if not any(p is self.value_head.summary.weight for g in optimizer.param_groups for p in g["params"]):
            optimizer.add_param_group({"params": list(self.value_head.parameters()), "weight_decay": 0.0})
        return optimizer

    # ---------------------------------------------------------------- the loop

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        args = self.args
        loader = self.get_train_dataloader()
        per_step = args.gradient_accumulation_steps * args.ppo_buffer_size  # prompt batches per rollout
        steps_per_epoch = max(len(loader) // per_step, 1)
        max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        self.create_optimizer_and_scheduler(num_training_steps=max_steps)
        self.state = TrainerState(stateful_callbacks=[cb for cb in self.callback_handler.callbacks + [self.control]
                                                      if isinstance(cb, ExportableState)])
        self.state.train_batch_size = args.per_device_train_batch_size
        self.state.compute_steps(args, max_steps)
        self.state.init_training_references(self, max_steps, args.num_train_epochs, trial)
        self._enable_checkpointing()
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        start, losses, pending = time.time(), [], defaultdict(list)
        batches = self._prompt_batches(loader, steps_per_epoch)
        for _ in range(max_steps):
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            rollout = self._rollout([next(batches) for _ in range(per_step)])
            stats = self._learn(rollout)
            self.lr_scheduler.step()
            self.state.global_step += 1
            self.state.epoch = self.state.global_step / steps_per_epoch
            self.state.num_input_tokens_seen += sum(int(r["attention_mask"].sum()) for r in rollout)
            losses.append(stats["loss"])
            for key, value in stats.items():
                pending[key].append(value)
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            self._after_step(pending)
            if self.control.should_training_stop:
                break
        samples = self.state.global_step * per_step * args.per_device_train_batch_size
        metrics = speed_metrics("train", start, num_samples=samples, num_steps=self.state.global_step)
        metrics["train_loss"] = sum(losses) / max(len(losses), 1)
        self.log(metrics)
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        return TrainOutput(self.state.global_step, metrics["train_loss"], metrics)

    def _enable_checkpointing(self) -> None:
        from tuneforge.train.checkpointing import installed_prefix

        prefix = installed_prefix()
        if getattr(self.args, f"{prefix}_checkpointing", False):
            kwargs = getattr(self.args, f"{prefix}_checkpointing_kwargs", None) or {"use_reentrant": False}
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def _prompt_batches(self, loader, steps_per_epoch: int):
        """Prompt batches forever, epoch after epoch (the epoch callbacks fire at each pass's end)."""
        while True:
            self.control = self.callback_handler.on_epoch_begin(self.args, self.state, self.control)
            yield from loader
            self.control = self.callback_handler.on_epoch_end(self.args, self.state, self.control)

    def _after_step(self, pending: dict) -> None:
        """Log the averages since the last log, evaluate and save a checkpoint when the callbacks ask for it."""
        if self.control.should_log:
            logs = {k: sum(v) / len(v) for k, v in pending.items()}
            logs["learning_rate"] = self.lr_scheduler.get_last_lr()[0]
            pending.clear()
            self.log(logs)
        if self.control.should_evaluate and self.eval_dataset is not None:
            self.evaluate()
        if self.control.should_save:
            self._save_checkpoint(self.model, trial=None)
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    # ---------------------------------------------------------------- rollout

    def _policy(self):
        return self.accelerator.unwrap_model(self.model)

    @torch.no_grad()
    def _sample(self, batch: dict, greedy: bool = False) -> dict:
        """Replies to one prompt batch and their scores: sequences (prompt + reply), masks, the prompt width."""
        prompt_ids = batch["input_ids"].to(self.args.device)
        prompt_mask = batch["attention_mask"].to(self.args.device)
        self.model.eval()
        config = self.generation_config
        if greedy:
            config = copy.deepcopy(config)
            config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
        sequences = self._policy().generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
        width = prompt_ids.shape[1]
        mask = reply_mask(sequences[:, width:], self.generation_config.eos_token_id)
        reply = torch.where(mask.bool(), sequences[:, width:], self.generation_config.pad_token_id)
        texts = self.processing_class.batch_decode([r[m.bool()] for r, m in zip(reply, mask)], skip_special_tokens=True)
        conversations = [[*p, {"role": "assistant", "content": t}] for p, t in zip(batch["prompt"], texts)]
        scores = torch.tensor(self.reward.score(conversations), dtype=torch.float32, device=prompt_ids.device)
        return {"input_ids": torch.cat([prompt_ids, reply], 1), "attention_mask": torch.cat([prompt_mask, mask], 1),
                "prompt_width": width, "mask": mask.float(), "scores": scores}

    def _forward(self, model, r: dict, values: bool = True):
        """Log-probabilities of the reply tokens (at the sampling temperature) and, with `values`, the value head's
        estimate before each of them. Only the reply positions are projected onto the vocabulary."""
        ids, attn, width = r["input_ids"], r["attention_mask"], r["prompt_width"]
        out = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(1) - 1).clamp(min=0), use_cache=False,
                    logits_to_keep=ids.shape[1] - width + 1, output_hidden_states=values)
        logprobs = selective_log_softmax(out.logits[:, :-1].float(), ids[:, width:], temperature=self.temperature)
        if not values:
            return logprobs, None
        return logprobs, self.value_head(out.hidden_states[-1][:, width - 1:-1])

    @torch.no_grad()
    def _rollout(self, batches: list[dict]) -> list[dict]:
        rollout = []
        for batch in batches:
            r = self._sample(batch)
            r["logprobs"], r["values"] = self._forward(self.model, r)
            if self.reference is not None:
                r["ref_logprobs"], _ = self._forward(self.reference, r, values=False)
            else:
                with self.model.disable_adapter():
                    r["ref_logprobs"], _ = self._forward(self.model, r, values=False)
            rollout.append(r)
        return rollout

    # ---------------------------------------------------------------- learning

    def _advantages(self, rollout: list[dict]) -> tuple[list, list, list]:
        """(advantages, returns, kl) per micro-batch, from the scores (normalised with ppo_score_norm), the KL penalty
        and GAE; rewards whitened with ppo_whiten_rewards; advantages whitened over the whole rollout."""
        masks = [r["mask"] for r in rollout]
        if self.args.ppo_score_norm:
            self.score_moments.update(torch.cat([r["scores"] for r in rollout]))
        rewards, kls = [], []
        for r in rollout:
            scores = self.score_moments.normalize(r["scores"]) if self.args.ppo_score_norm else r["scores"]
            reward, kl = ppo_math.kl_rewards(scores, r["logprobs"], r["ref_logprobs"], r["mask"], self.kl_ctl.value)
            rewards.append(reward)
            kls.append(kl)
        if self.args.ppo_whiten_rewards:
            rewards = ppo_math.masked_whiten(rewards, masks, shift_mean=False)
        pairs = [ppo_math.gae(reward, r["values"], r["mask"]) for reward, r in zip(rewards, rollout)]
        advantages = ppo_math.masked_whiten([a for a, _ in pairs], masks)
        return advantages, [ret for _, ret in pairs], kls

    def _learn(self, rollout: list[dict]) -> dict:
        args = self.args
        advantages, returns, kls = self._advantages(rollout)
        self.model.train()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        generator = torch.Generator().manual_seed(args.seed + self.state.global_step)
        stats, grad_norm = defaultdict(list), None
        for _ in range(args.ppo_epochs):
            order = torch.randperm(len(rollout), generator=generator).tolist()
            for k, i in enumerate(order):
                r = rollout[i]
                logprobs, values = self._forward(self.model, r)
                loss, s = ppo_math.ppo_loss(logprobs, r["logprobs"], values, r["values"], advantages[i], returns[i], r["mask"])
                (loss / args.gradient_accumulation_steps).backward()
                stats["loss"].append(loss.item())
                for key, value in s.items():
                    stats[key].append(value)
                if (k + 1) % args.gradient_accumulation_steps == 0 or k + 1 == len(order):
                    if args.max_grad_norm:
                        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm).item()
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
        scores = torch.cat([r["scores"] for r in rollout])
        kl = torch.cat([k.sum(1) for k in kls]).mean().item()
        self.kl_ctl.update(kl, len(scores))
        out = {key: sum(v) / len(v) for key, v in stats.items()}
        out.update(reward=scores.mean().item(), reward_std=scores.std().item() if len(scores) > 1 else 0.0, kl=kl,
                   kl_coef=self.kl_ctl.value, response_length=torch.cat([r["mask"].sum(1) for r in rollout]).mean().item())
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        return out

    # ---------------------------------------------------------------- evaluation and saving

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """The mean score of greedy replies to the held-out prompts (deterministic, so runs and steps compare)."""
        start, scores, lengths = time.time(), [], []
        for batch in self.get_eval_dataloader(eval_dataset):
            r = self._sample(batch, greedy=True)
            scores.append(r["scores"])
            lengths.append(r["mask"].sum(1))
        scores, lengths = torch.cat(scores), torch.cat(lengths)
        metrics = {f"{metric_key_prefix}_reward": scores.mean().item(), f"{metric_key_prefix}_response_length": lengths.mean().item()}
        metrics.update(speed_metrics(metric_key_prefix, start, num_samples=len(scores)))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """The policy (its adapter only: the reward adapter is not saved with it), the value head, the tokenizer."""
        from peft import PeftModel
        from safetensors.torch import save_file

        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        policy = self._policy()
        if isinstance(policy, PeftModel):
            policy.save_pretrained(output_dir, selected_adapters=[policy.active_adapter])
        else:
            policy.save_pretrained(output_dir)
        save_file({k: v.contiguous() for k, v in self.value_head.state_dict().items()}, os.path.join(output_dir, VALUE_HEAD_FILE))
        self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
