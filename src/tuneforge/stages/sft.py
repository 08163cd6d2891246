"""Supervised fine-tuning: chat data with loss on the assistant's turns, on the Hugging Face Trainer with the
supervised-only loss (train/trainer.py)."""

from tuneforge.stages.registry import register_stage


def build_data(cfg, tokenizer, progress=None):
    """Tokenized chat rows with loss masks, and the collator (packed or padded)."""
    from tuneforge import data

    if cfg.data.streaming:
        from tuneforge.data import streaming

        datasets, stats = streaming.build(cfg.data, tokenizer)
        return datasets, stats, data.build_collator(tokenizer, cfg.data.packing)
    datasets, stats = data.build(cfg.data, tokenizer, cfg.model.cache_dir, progress=progress)
    return datasets, stats, data.build_collator(tokenizer, cfg.data.packing)


def build_trainer(cfg, model, tokenizer, datasets, collator, callbacks):
    from tuneforge.stages.common import build_trainer as common_trainer
    from tuneforge.train.trainer import SupervisedLossTrainer

    trainer = common_trainer(cfg, model, tokenizer, datasets, collator, callbacks, SupervisedLossTrainer)
    trainer.supervised_logits_only = cfg.method.supervised_logits_only
    return trainer


register_stage("sft", build_data, build_trainer, data_kind="supervised", streams=True,
               help="Supervised fine-tuning: chat or instruction data, loss on the assistant's turns.")
