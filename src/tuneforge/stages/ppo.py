"""PPO (RLHF): the policy samples replies to prompts, a reward model trained by `stage: rm` scores them, and the policy
and a value head learn from the scores with a per-token KL penalty toward the reference (the loop: train/ppo.py).

Model-shared by default (`reward_model_type: lora`, finetuning_type lora): one copy of the base in memory. The policy
is the trained LoRA adapter, the reference is the same base with adapters off, the reward is the rm run's LoRA
adapter and score head loaded as a second, frozen adapter. `reward_model_type: full` loads the reward model (a full
classifier, or an adapter on its own base) as a separate model; a policy without adapters (full, freeze, ...) gets
a separate frozen reference copy. PPO settings keep LLaMA-Factory's names and defaults."""

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Literal

from tuneforge import TuneforgeError
from tuneforge.stages.registry import register_stage

log = logging.getLogger(__name__)


@functools.cache
def _args_class() -> type:
    """PPOArguments: TrainingArguments plus the PPO settings (built on first use: importing this stage does not import
    transformers)."""
    from transformers import TrainingArguments

    @dataclass
    class PPOArguments(TrainingArguments):
        """TrainingArguments plus the PPO settings (LLaMA-Factory's names and defaults). One PPO step collects
        per_device_train_batch_size x gradient_accumulation_steps x ppo_buffer_size replies, then makes ppo_epochs passes
        over them with an optimizer update every gradient_accumulation_steps micro-batches."""

        ppo_buffer_size: int = field(default=1, metadata={"help": "Rollout mini-batches (of per_device_train_batch_size x "
                                                                   "gradient_accumulation_steps replies) collected per PPO step."})
        ppo_epochs: int = field(default=4, metadata={"help": "Optimisation passes over each rollout."})
        ppo_score_norm: bool = field(default=False, metadata={"help": "Normalise reward scores by their running mean and std."})
        ppo_target: float = field(default=6.0, metadata={"help": "Target KL (summed per reply) of the adaptive KL penalty."})
        ppo_whiten_rewards: bool = field(default=False, metadata={"help": "Whiten the per-token rewards before computing advantages."})
        reward_model: str | None = field(default=None, metadata={"help": "The output_dir of a `stage: rm` run (LoRA adapter or full model)."})
        reward_model_type: Literal["lora", "full"] = field(default="lora", metadata={
            "help": "lora: the reward adapter shares the policy's base (one copy in memory); full: a separate reward model."})

    PPOArguments.__qualname__ = "PPOArguments"  # pickled with the run's arguments: found through __getattr__ below
    return PPOArguments


def __getattr__(name: str):
    """`PPOArguments` as a module attribute, built on first use."""
    if name == "PPOArguments":
        return _args_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def validate(cfg) -> list:
    """Every PPO setting this run cannot honour, as (key, message) pairs (checked when the config loads): reward_model
    missing; ppo_epochs, ppo_buffer_size or ppo_target out of range; reward_model_type lora without finetuning_type
    lora; prefix/prompt tuning; pissa_init; resume_from_checkpoint; several processes."""
    args, method, problems = cfg.train, cfg.method.finetuning_type, []
    if not args.get("reward_model"):
        problems.append(("reward_model", "reward_model is missing; set it to the output_dir of a `stage: rm` run "
                                         "(e.g. reward_model: saves/rm_lora)"))
    for key in ("ppo_epochs", "ppo_buffer_size"):
        if args.get(key, 1) < 1:
            problems.append((key, f"{key} must be at least 1 (got {args.get(key)})"))
    if args.get("ppo_target", 6.0) <= 0:
        problems.append(("ppo_target", f"ppo_target must be > 0 (got {args.get('ppo_target')})"))
    if method in ("prefix", "prompt"):
        problems.append(("finetuning_type", f"stage ppo reads log-probabilities position by position, which virtual tokens "
                                            f"shift; finetuning_type {method} is not supported: use lora, freeze or full"))
    elif args.get("reward_model_type", "lora") == "lora" and method != "lora":
        problems.append(("reward_model_type", f"reward_model_type: lora shares the policy's base through adapters and needs "
                                              f"finetuning_type: lora (got {method}); set reward_model_type: full to load "
                                              f"the reward model separately"))
    lora = cfg.method_section("lora")
    if method == "lora" and lora.pissa_init:
        problems.append(("pissa_init", "pissa_init rewrites the base weights, which stage ppo shares with the reference "
                                       "and the reward adapter; drop pissa_init"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        problems.append((None, "stage ppo runs in one process (its loop does not synchronise gradients across processes); "
                               "launch it without torchrun or accelerate"))
    if cfg.output.resume_from_checkpoint:
        problems.append(("resume_from_checkpoint", "stage ppo cannot resume yet (the KL coefficient and score statistics are "
                                                   "not checkpointed); remove resume_from_checkpoint to start a new run"))
    return problems


def check_reward_model(cfg, folder: str) -> None:
    """The reward folder is a reward model of the kind reward_model_type says, and (lora) fits the policy's width;
    from file headers alone.

    Raises:
        TuneforgeError (key reward_model): the folder is missing or not a reward model, a full model given as lora, or
            an adapter trained on a model of another width.
    """
    from tuneforge.memory.shapes import load_shape
    from tuneforge.models.reward import check_width, reward_kind

    path, wanted = cfg.train.get("reward_model"), cfg.train.get("reward_model_type", "lora")
    kind = reward_kind(path)
    if wanted == "lora" and kind == "full":
        raise TuneforgeError(f"reward_model `{path}` is a full model, not a LoRA adapter; set reward_model_type: full "
                             f"(it is then loaded as a separate model)", key="reward_model")
    if wanted == "lora":
        check_width(path, load_shape(folder).hidden)


class PromptCollator:
    """Prompts left-padded (generation continues from the right edge) plus their messages (the reward re-renders
    prompt + reply with the reward model's chat template)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = max(len(r["prompt_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["prompt_ids"])
            ids[i, width - n:] = torch.tensor(r["prompt_ids"], dtype=torch.long)
            mask[i, width - n:] = 1
        return {"input_ids": ids, "attention_mask": mask, "prompt": [r["prompt"] for r in rows]}


def build_data(cfg, tokenizer, progress=None):
    """Prompts (data.prompts), whole: a prompt longer than cutoff_len is dropped, since the reward re-renders it."""
    from tuneforge.data.prompts import build_prompts

    datasets, stats = build_prompts(cfg.data, tokenizer, cfg.model.cache_dir, progress=progress, keep_overlong=False)
    return datasets, stats, PromptCollator(tokenizer.pad_token_id)


def load_model(cfg, folder: str):
    """The policy (the causal LM with the method applied), after checking the reward folder."""
    from tuneforge.stages.common import load_model as load_policy

    check_reward_model(cfg, folder)
    return load_policy(cfg, folder)


def _reward(cfg, model):
    """The reward adapter on the policy's base (SharedReward), or a separate reward model (RewardModel); both score
    conversations."""
    from tuneforge.models.reward import SharedReward, load_reward_model, reward_tokenizer

    path = cfg.train.get("reward_model")
    cutoff = cfg.data.cutoff_len + cfg.generation.max_new_tokens
    if cfg.train.get("reward_model_type", "lora") == "lora":
        return SharedReward(model, path, reward_tokenizer(path), cutoff)
    return load_reward_model(path, cutoff_len=cutoff)


def _reference(cfg, model):
    """None when the reference is the policy with adapters off; else a frozen copy of the base."""
    from peft import PeftModel

    from tuneforge import models
    from tuneforge.data.cache import cache_root

    if isinstance(model, PeftModel):
        return None
    folder = models.local_folder(cfg.model, cache_root(cfg.model.cache_dir))
    ref = models.load_model(folder, cfg.model, models.resolve_dtype(cfg.model, cfg.train.args))
    return ref.eval().requires_grad_(False)


def generation_config(cfg, tokenizer, model):
    """Sampling settings of the rollouts from the generation keys (temperature 0: greedy)."""
    from transformers import GenerationConfig

    g = cfg.generation
    configured = model.generation_config.eos_token_id  # the model's own end tokens (an int or a list) besides the tokenizer's
    eos = {tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])} - {None}
    sample = g.temperature > 0
    return GenerationConfig(max_new_tokens=g.max_new_tokens, do_sample=sample, temperature=g.temperature if sample else None,
                            top_p=g.top_p if sample else None, top_k=(g.top_k or None) if sample else None,
                            repetition_penalty=g.repetition_penalty, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=sorted(eos), use_cache=True)


def build_trainer(cfg, model, tokenizer, datasets, collator, callbacks):
    from tuneforge.stages.common import build_trainer as common_trainer
    from tuneforge.train.ppo import PPOTrainer, ValueHead

    hidden = model.config.get_text_config().hidden_size
    return common_trainer(cfg, model, tokenizer, datasets, collator, callbacks, PPOTrainer, value_head=ValueHead(hidden),
                          reward=_reward(cfg, model), reference=_reference(cfg, model),
                          generation_config=generation_config(cfg, tokenizer, model))


def memory(x, cfg):
    """Rows of prompt + max_new_tokens with full-vocabulary logits; the generation KV cache, the value head and (shared)
    the reward adapter as named buffers; a separate reward model or reference as copies of the base."""
    from dataclasses import replace

    from tuneforge.memory.api import shape_of
    from tuneforge.memory.estimate import footprint
    from tuneforge.memory.footprint import ADAPTER, BYTES

    shape = shape_of(cfg.model.model_name_or_path, cfg.model.cache_dir)
    new = cfg.generation.max_new_tokens
    seq = x.seq + new
    shared = cfg.train.get("reward_model_type", "lora") == "lora"
    adapter = cfg.method.finetuning_type == "lora"
    extra = {**x.extra,
             "generation KV cache": x.batch * seq * shape.layers * 2 * shape.kv_dim * BYTES[x.dtype],
             "value head (weights, gradient, AdamW)": 4 * shape.hidden * 4}
    if shared and adapter:  # the same shape as the policy's adapter
        extra["reward adapter"] = footprint(shape, x).values(ADAPTER) * 4
    copies = x.reference_copies + (0 if shared else 1) + (0 if adapter else 1)
    return replace(x, seq=seq, attention_seq=(x.attention_seq or x.seq) + new, supervised_logits_only=False,
                   reference_copies=copies, extra=extra)


register_stage("ppo", build_data, build_trainer, args_class=_args_class, data_kind="prompt", packs=False, memory=memory,
               load_model=load_model, validate=validate,
               help="PPO (RLHF): sample replies, score them with a `stage: rm` reward model, learn with a KL penalty; "
                    "one base in memory with LoRA.")
