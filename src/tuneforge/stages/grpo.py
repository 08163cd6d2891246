"""Group Relative Policy Optimization and its variants on TRL's GRPOTrainer: for each prompt the policy samples
`num_generations` completions (transformers' generate on the CPU; vLLM with `use_vllm` on a GPU), `reward_funcs`
score them (stages/rewards.py), and each completion is pushed up or down by its reward relative to its group's.

The variants are TRL's keys: `loss_type` (grpo, dr_grpo, dapo, bnpo, cispo, sapo, luspo, vespo),
`importance_sampling_level: sequence` (GSPO), `beta` (KL weight against the reference; 0 loads no reference),
`scale_rewards`, `epsilon`/`epsilon_high`, `num_iterations`. The reference: with an adapter method TRL keeps a frozen
copy of the initial adapter beside the trained one (no second base; dropped before saving); with full or freeze
fine-tuning and beta > 0, TRL loads a frozen copy of the base from the same local folder.

Raises (before any model loads, at config validation):
    `reward_funcs` empty, an unknown rule, a missing file or function, a function without **kwargs, a folder that is
    not a reward model; `reward_weights` not one per reward; a generation batch (per_device_train_batch_size x
    processes x gradient_accumulation_steps, or generation_batch_size) that is not a multiple of `num_generations`;
    `use_vllm` without a GPU or without vllm; an unknown `loss_type` or `importance_sampling_level`.
"""

import dataclasses
import functools
import os

from tuneforge.stages import rewards
from tuneforge.stages.registry import register_stage

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16's; it checks them only mid-step
SAMPLING_LEVELS = ("token", "sequence")


def _generation_rows(args) -> tuple[int, str]:
    """Completions generated per step on one process, as TRL derives them (before its __post_init__ fills them in)."""
    per, world = args.per_device_train_batch_size, int(os.environ.get("WORLD_SIZE", "1"))
    if args.generation_batch_size is not None:
        return args.generation_batch_size, f"generation_batch_size {args.generation_batch_size}"
    steps, key = ((args.steps_per_generation, "steps_per_generation") if args.steps_per_generation is not None
                  else (args.gradient_accumulation_steps, "gradient_accumulation_steps"))
    return per * world * steps, f"per_device_train_batch_size {per} x {world} process{'es' if world > 1 else ''} x {key} {steps}"


def check_arguments(args) -> list[str]:
    """Our checks of the GRPO keys, each naming its key and the fix (TRL's own checks run after these)."""
    import importlib.util

    import torch

    problems = rewards.check(list(args.reward_funcs))
    if args.reward_weights is not None and len(args.reward_weights) != len(args.reward_funcs):
        problems.append(f"reward_weights has {len(args.reward_weights)} values for {len(args.reward_funcs)} reward_funcs; "
                        f"give one weight per reward")
    if args.num_generations is None or args.num_generations < 2:
        problems.append(f"num_generations must be >= 2 (got {args.num_generations}): each completion is judged against "
                        f"the others of its prompt")
    else:
        rows, how = _generation_rows(args)
        if rows % args.num_generations:
            problems.append(f"num_generations {args.num_generations} does not divide the generation batch {rows} ({how}): a "
                            f"batch must hold whole groups of one prompt's completions; e.g. set per_device_train_batch_size: "
                            f"{args.num_generations}")
    if args.loss_type not in LOSS_TYPES:
        problems.append(f"loss_type `{args.loss_type}` is unknown; use one of {', '.join(LOSS_TYPES)}")
    if args.importance_sampling_level not in SAMPLING_LEVELS:
        problems.append(f"importance_sampling_level must be token or sequence (sequence: GSPO); "
                        f"got `{args.importance_sampling_level}`")
    if args.use_vllm and not torch.cuda.is_available():
        problems.append("use_vllm needs a CUDA GPU (vLLM does not generate on the CPU here); set use_vllm: false to generate "
                        "with transformers")
    elif args.use_vllm and importlib.util.find_spec("vllm") is None:
        problems.append("use_vllm needs vllm: pip install vllm (or set use_vllm: false to generate with transformers)")
    return problems


@functools.cache
def arguments_class() -> type:
    """TRL's GRPOConfig plus `reward_funcs`, checked on construction (so config validation refuses bad values)."""
    from trl import GRPOConfig

    @dataclasses.dataclass
    class GRPOArguments(GRPOConfig):
        """GRPOConfig with the rewards as a key: `reward_funcs` (stages/rewards.py explains the forms)."""

        reward_funcs: list[str] = dataclasses.field(default_factory=list, metadata={
            "help": "Rewards, summed with reward_weights: rules exact_match[:column], contains[:column], regex:<pattern>, "
                    "length:<words>, think_format; a Python function path/to/file.py:function or package.module:function; "
                    "or a reward-model folder trained with stage: rm."})

        def __post_init__(self):
            problems = check_arguments(self)
            if problems:
                raise ValueError("; ".join(problems))
            super().__post_init__()

    GRPOArguments.__module__, GRPOArguments.__qualname__ = __name__, "GRPOArguments"  # picklable (checkpoints save args)
    return GRPOArguments


def __getattr__(name: str):
    """`GRPOArguments` is built on first use (TRL is too heavy to import while a config loads); pickle finds it here."""
    if name == "GRPOArguments":
        return arguments_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_data(cfg, tokenizer, progress=None):
    """Prompt rows (data/prompts.py). Prompts longer than cutoff_len are dropped, not cut: TRL renders `prompt` itself
    and would generate from all of it. The rewards' columns and the eval batch are checked here, before the model loads.

    Raises:
        TuneforgeError: a reward reads a column the data lacks (reward_funcs); with held-out prompts, an eval batch that
            is not a multiple of the eval group (per_device_eval_batch_size).
    """
    from tuneforge import TuneforgeError
    from tuneforge.data.prompts import build_prompts
    from tuneforge.stages.common import training_arguments

    datasets, stats = build_prompts(cfg.data, tokenizer, cfg.model.cache_dir, progress=progress, keep_overlong=False)
    args = training_arguments(cfg)
    rewards.check_columns(list(args.reward_funcs), datasets["train"].column_names)
    group = args.num_generations_eval or args.num_generations
    if "eval" in datasets and (args.per_device_eval_batch_size * args.world_size) % group:
        raise TuneforgeError(f"per_device_eval_batch_size {args.per_device_eval_batch_size} is not a multiple of "
                             f"{'num_generations_eval' if args.num_generations_eval else 'num_generations'} {group}: held-out "
                             f"prompts are scored in whole groups; set per_device_eval_batch_size: {group}",
                             key="per_device_eval_batch_size")
    return datasets, stats, None


# Sampling keys GRPOConfig shares with the generation section (which owns them in a config): written ones reach TRL
SAMPLING_KEYS = frozenset({"temperature", "top_p", "top_k", "repetition_penalty"})


def build_trainer(cfg, model, tokenizer, datasets, collator, callbacks):
    """TRL's GRPOTrainer over our model (method applied) and tokenizer, with the method's optimizer and callbacks."""
    from trl import GRPOTrainer

    from tuneforge import methods
    from tuneforge.stages.common import training_arguments

    method = methods.get(cfg.method.finetuning_type)
    args = training_arguments(cfg)
    args.trust_remote_code = cfg.model.trust_remote_code  # TRL loads a full fine-tuning's reference with it
    args.include_num_input_tokens_seen = "no"  # TRL counts the prompt and completion tokens itself
    for key in SAMPLING_KEYS & cfg.given:  # the generation section owns these keys; GRPO's rollouts sample with them
        setattr(args, key, getattr(cfg.generation, key))
    funcs = rewards.build(list(args.reward_funcs), dtype=model.dtype, device=args.device)
    from tuneforge.train.checkpoints import with_atomic_checkpoints

    trainer = with_atomic_checkpoints(GRPOTrainer)(model=model, reward_funcs=funcs, args=args, train_dataset=datasets["train"],
                                                   eval_dataset=datasets.get("eval"), processing_class=tokenizer,
                                                   callbacks=[*callbacks, *method.callbacks(cfg), _reference_adapter_dropper()],
                                                   optimizers=(method.optimizer(model, cfg, args), None))
    trainer.run_config = cfg  # the resume fingerprint compares against it
    return trainer


def _reference_adapter_dropper():
    """A callback that deletes the frozen copy of the initial adapter (`ref`) TRL adds beside a peft model's trained
    one when beta > 0, once training ends, so the saved output holds the trained adapter only."""
    from transformers import TrainerCallback

    class DropReferenceAdapter(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kw):
            if "ref" in getattr(model, "peft_config", {}):
                model.delete_adapter("ref")

    return DropReferenceAdapter()


def _train_value(cfg, key: str):
    """A train key's value: the user's, else the GRPO arguments' default."""
    if key in cfg.train.args:
        return cfg.train.args[key]
    f = arguments_class().__dataclass_fields__[key]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def memory(x, cfg):
    """A step of GRPO: the training batch is `x.batch` completions (per_device_train_batch_size) of prompt +
    max_completion_length tokens, scored through TRL's fused LM head (log-probs in tiles of up to 4096 tokens x 32768
    vocabulary entries, no full logits); generation keeps a KV cache and the last logits for the generation batch (x.batch x steps_per_generation, or generation_batch_size per process); beta > 0
    keeps a reference (a copy of the base, or of the adapter for an adapter method); each reward-model folder is
    another model in memory."""
    from tuneforge import methods
    from tuneforge.memory.api import shape_of
    from tuneforge.memory.estimate import trainable_params
    from tuneforge.memory.footprint import BYTES

    shape = shape_of(cfg.model.model_name_or_path, cfg.model.cache_dir)
    completion = int(_train_value(cfg, "max_completion_length"))
    steps, gen_batch = _train_value(cfg, "steps_per_generation"), _train_value(cfg, "generation_batch_size")
    rows = (gen_batch // max(1, x.world_size) if gen_batch
            else x.batch * int(steps or _train_value(cfg, "gradient_accumulation_steps")))
    seq = x.seq + completion
    b = BYTES.get(x.dtype, 4)
    extra = dict(x.extra)
    extra["generation KV cache"] = 2 * shape.layers * shape.kv_dim * seq * rows * b
    extra["generation logits"] = 2 * rows * shape.vocab * 4
    extra["log-prob tile"] = min(x.batch * seq, 4096) * min(shape.vocab, 32768) * 4
    adapter = methods.get(x.finetuning_type).adapter
    beta = float(_train_value(cfg, "beta"))
    if beta and adapter:
        extra["reference adapter"] = trainable_params(shape, x) * 4
    for folder in rewards.model_folders(list(_train_value(cfg, "reward_funcs"))):
        extra[f"reward model {os.path.basename(os.path.normpath(folder))}"] = _reward_model_params(folder, shape) * b
    return dataclasses.replace(x, seq=seq, attention_seq=(x.attention_seq or x.seq) + completion, supervised_logits_only=True,
                               reference_copies=x.reference_copies + (1 if beta and not adapter else 0), extra=extra)


def _reward_model_params(folder: str, policy_shape) -> int:
    """Parameters of a reward-model folder: from its config.json, else (a LoRA reward adapter, loaded onto its own copy
    of its base) the policy's, assumed to share that base."""
    from tuneforge import TuneforgeError
    from tuneforge.memory.api import shape_of

    try:
        return shape_of(folder).total_params
    except TuneforgeError:
        return policy_shape.total_params


def validate(cfg) -> list:
    """GRPO settings of the generation section it cannot sample with, as (key, message) pairs."""
    if "temperature" in cfg.given and cfg.generation.temperature == 0:
        return [("temperature", "GRPO samples several completions of each prompt and scores them against each other; "
                                "temperature 0 (greedy) makes them identical: set temperature > 0 (TRL's default is 1.0)")]
    return []


register_stage("grpo", build_data, build_trainer, args_class=arguments_class, data_kind="prompt", packs=False, memory=memory,
               validate=validate,
               help="GRPO and its variants (loss_type dr_grpo, dapo, bnpo, ...; GSPO with importance_sampling_level: "
                    "sequence): sampled completions of prompts scored by reward_funcs.")
