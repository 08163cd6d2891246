"""Continued pre-training: plain text (a `text` column, `columns: {prompt: ...}`, or a .txt file with one document a
line) packed into cutoff_len blocks with EOS between documents and no attention across them; loss on every token,
with the supervised-only loss trainer SFT uses (train/trainer.py)."""

from tuneforge.stages.registry import register_stage
from tuneforge.stages.sft import build_trainer  # the supervised-only loss trainer: in pt every token but a document's first is supervised


def build_data(cfg, tokenizer, progress=None):
    """Blocks of documents (data/text.py) and the collator that keeps the documents apart."""
    from tuneforge.data import text

    datasets, stats = text.build(cfg.data, tokenizer, cfg.model.cache_dir, progress=progress)
    return datasets, stats, text.DocumentCollator(tokenizer, cfg.data.packing)


register_stage("pt", build_data, build_trainer, data_kind="text",
               help="Continued pre-training: plain text in cutoff_len blocks, documents kept apart, loss on every token.")
