"""Reward modelling: a scalar score head on the base (AutoModelForSequenceClassification, one label) trained on
preference pairs with TRL's RewardTrainer (loss -log sigmoid(r_chosen - r_rejected)); held-out pair accuracy
(`val_size`) is reported as `eval_accuracy`. With LoRA the score head trains and is saved beside the adapter (peft's
SEQ_CLS task); the folder loads back with `tuneforge.models.reward.load_reward_model` and feeds `stage: ppo`."""

import logging

from tuneforge.stages.registry import register_stage

log = logging.getLogger(__name__)

# adapter methods other than LoRA (prefix, prompt) would leave the score head frozen and unsaved
ADAPTERS_WITH_HEAD = ("lora",)


def _args_class() -> type:
    from trl import RewardConfig

    return RewardConfig


def validate(cfg) -> list:
    """Settings the rm stage cannot honour, as (key, message) pairs (checked when the config loads): an adapter method
    without a trainable head; max_length (pairs are cut to cutoff_len by the data pipeline)."""
    from tuneforge import methods

    problems, method = [], cfg.method.finetuning_type
    if method in methods.METHODS and methods.get(method).adapter and method not in ADAPTERS_WITH_HEAD:
        problems.append(("finetuning_type", f"finetuning_type {method} cannot train the reward model's score head; use lora, "
                                            f"freeze or full"))
    if "max_length" in cfg.given:
        problems.append(("max_length", "max_length does not apply to stage rm: pairs are cut to cutoff_len when tokenized; "
                                       "set cutoff_len instead"))
    return problems


def build_data(cfg, tokenizer, progress=None):
    """Tokenized pairs as TRL's reward collator reads them: `chosen_ids` and `rejected_ids` each the whole sequence
    (prompt + reply), cut to cutoff_len by data.preference."""
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from tuneforge.data.preference import build_pairs

    datasets, stats = build_pairs(cfg.data, tokenizer, cfg.model.cache_dir, progress=progress)

    def whole(row):
        return {"chosen_ids": row["prompt_ids"] + row["chosen_ids"], "rejected_ids": row["prompt_ids"] + row["rejected_ids"]}

    datasets = {name: ds.map(whole, remove_columns=["prompt_ids"], desc="joining prompt and replies") for name, ds in datasets.items()}
    return datasets, stats, DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)


def load_model(cfg, folder: str):
    """The base as a sequence classifier with one label (a new, seeded score head), with the method applied; the
    score head trains under every method (LoRA: peft's SEQ_CLS task keeps it in `modules_to_save`)."""
    from transformers import set_seed

    from tuneforge import methods, models
    from tuneforge.models.arch import count_parameters
    from tuneforge.models.reward import load_classifier

    set_seed(cfg.data.seed)
    model = load_classifier(folder, cfg.model, models.resolve_dtype(cfg.model, cfg.train.args))
    model = methods.get(cfg.method.finetuning_type).apply(model, cfg)
    if not methods.get(cfg.method.finetuning_type).adapter:
        model.score.requires_grad_(True)  # freeze and friends choose decoder layers; the new head must learn regardless
    trainable, total = count_parameters(model)
    log.info("reward model (%s): %s trainable of %s parameters", cfg.method.finetuning_type, f"{trainable:,}", f"{total:,}")
    return model


def build_trainer(cfg, model, tokenizer, datasets, collator, callbacks):
    from tuneforge.stages.common import build_trainer as common_trainer
    from tuneforge.train.reward_trainer import PairRewardTrainer

    return common_trainer(cfg, model, tokenizer, datasets, collator, callbacks, PairRewardTrainer)


def memory(x, cfg):
    """A pair is two sequences: twice the rows of the largest batch."""
    from dataclasses import replace

    return replace(x, batch=2 * x.batch)


register_stage("rm", build_data, build_trainer, args_class=_args_class, data_kind="pairwise", packs=False, memory=memory,
               load_model=load_model, validate=validate,
               help="Reward model: a scalar head scores chosen above rejected replies (ranking datasets); eval_accuracy on held-out pairs.")
