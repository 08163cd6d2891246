"""Batch collators: padded batches, or packed (padding-free) rows where attention never crosses examples."""

from tuneforge.data.templates import IGNORE_INDEX


def build_collator(tokenizer, packing: bool):
    """`packing`: one row per batch, position ids restart per example, so transformers builds a block-diagonal
    mask (SDPA/eager) or varlen attention (FlashAttention); the first label of each example is masked."""
    if packing:
        from transformers import DataCollatorWithFlattening

        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
