"""KTO on unpaired feedback: each row is a prompt, a completion and whether it is desirable (`kto_tag`); a preference
pair becomes one desirable and one undesirable row (data/preference.py). TRL's KTOTrainer on our tokenized rows; the
reference is handled as in stage dpo (adapter off, a frozen copy, or precompute_ref_log_probs)."""

import functools
from dataclasses import replace

from tuneforge.stages.registry import register_stage

KL_FREE = ("apo_zero_unpaired",)  # TRL's KTO losses without the batch KL term


@functools.cache
def args_class() -> type:
    """TRL's KTOConfig, refusing (before anything loads) what KTOTrainer would refuse after the model is loaded."""
    from dataclasses import dataclass

    from trl import KTOConfig

    @dataclass
    class CheckedKTOConfig(KTOConfig):
        def __post_init__(self):
            kl = self.loss_type not in KL_FREE
            if kl and self.per_device_train_batch_size <= 1:
                raise ValueError(f"per_device_train_batch_size must be > 1 for stage kto (got {self.per_device_train_batch_size}): "
                                 f"its KL term scores each prompt with another row's completion from the same batch; use 2 "
                                 f"or more (gradient_accumulation_steps does not count), or loss_type: apo_zero_unpaired")
            if kl and self.train_sampling_strategy != "sequential":
                raise ValueError(f"train_sampling_strategy must be sequential for stage kto (got {self.train_sampling_strategy}): "
                                 f"the KL completions are fixed per batch; tuneforge shuffles the rows once instead")
            for key in ("desirable_weight", "undesirable_weight"):
                if getattr(self, key) <= 0:
                    raise ValueError(f"{key} must be > 0 (got {getattr(self, key)})")
            super().__post_init__()

    CheckedKTOConfig.__qualname__ = "CheckedKTOConfig"  # pickled with the run's arguments: found through __getattr__ below
    return CheckedKTOConfig


def __getattr__(name: str):
    """`CheckedKTOConfig` as a module attribute, built on first use (importing TRL only when a config needs it)."""
    if name == "CheckedKTOConfig":
        return args_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def trainer_class() -> type:
    """TRL's KTOTrainer on our tokenized, cached rows."""
    from trl import KTOTrainer

    class TokenizedKTOTrainer(KTOTrainer):
        """KTOTrainer whose rows are already tokenized by our chat template (prompt_ids, completion_ids, label); only
        TRL's KL completions are added: each batch's completions rotated by one, as KTOTrainer does."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if not self.calculate_KL:
                return dataset

            def rotate(batch):
                return {"KL_completion_ids": [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]}

            return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size,
                               desc=f"KL completions for {dataset_name}")

    return TokenizedKTOTrainer


def build_data(cfg, tokenizer, progress=None):
    """Tokenized unpaired rows; the collator is TRL's, made by the trainer."""
    import logging

    from tuneforge.data.preference import build_unpaired

    datasets, stats = build_unpaired(cfg.data, tokenizer, cfg.model.cache_dir, progress=progress)
    logging.getLogger(__name__).info("kto rows: %d desirable, %d undesirable", stats["train_desirable"], stats["train_undesirable"])
    return datasets, stats, None


def build_trainer(cfg, model, tokenizer, datasets, collator, callbacks):
    from tuneforge.stages.common import build_trainer as common_trainer
    from tuneforge.stages.dpo import drop_copied_reference, reference_model

    trainer = common_trainer(cfg, model, tokenizer, datasets, None, callbacks, trainer_class(),
                             ref_model=reference_model(cfg, model))
    drop_copied_reference(trainer, cfg)
    return trainer


def memory(x, cfg):
    """Full and freeze fine-tuning keep a frozen reference copy of the base (not with precompute_ref_log_probs). The KL
    completions run without gradients, so they add no kept activations; the rows per batch stay b."""
    from tuneforge.methods.registry import METHODS

    method = METHODS.get(x.finetuning_type)
    copy = not (cfg.train.args.get("precompute_ref_log_probs") or (method is not None and method.adapter))
    return replace(x, reference_copies=1.0 if copy else 0.0)


register_stage(
    "kto", build_data, build_trainer, args_class=args_class, data_kind="unpaired", packs=False, memory=memory,
    train_defaults={"max_length": None},  # cutoff_len already bounds prompt + completion (data/preference.py)
    llamafactory_names={"pref_beta": ("beta", None), "kto_chosen_weight": ("desirable_weight", None),
                        "kto_rejected_weight": ("undesirable_weight", None)},
    help="Unpaired feedback (kto_tag: true/false per completion; pairs are split): KTO with desirable/undesirable weights.",
)
