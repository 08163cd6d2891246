"""Supervised fine-tuning: chat data with loss on the assistant's turns, on the Hugging Face Trainer."""

from tuneforge import data
from tuneforge.stages.common import build_trainer, load_model, load_tokenizer, train_and_save
from tuneforge.stages.registry import register_stage
from tuneforge.train.output import resolve_resume


def build(cfg):
    """(trainer, checkpoint to resume from, data stats) for one SFT job; nothing has trained yet."""
    resume = resolve_resume(cfg.output)
    folder, tokenizer = load_tokenizer(cfg)
    datasets, stats = data.build(cfg.data, tokenizer, cfg.model.cache_dir)
    model = load_model(cfg, folder)
    collator = data.build_collator(tokenizer, cfg.data.packing)
    return build_trainer(cfg, model, tokenizer, datasets, collator), resume, stats


def run(cfg) -> dict:
    """Run one SFT job described by `cfg`; return the final metrics (also in output_dir/all_results.json)."""
    trainer, resume, stats = build(cfg)
    return train_and_save(cfg, trainer, resume, {"train_examples": stats["train_examples"],
                                                 "dataset_supervised_tokens": stats["train_supervised_tokens"]})


register_stage("sft", run)
