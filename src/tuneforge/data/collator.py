"""Batch collators: padded batches, or packed (padding-free) rows where attention never crosses examples."""

from tuneforge.data.templates import IGNORE_INDEX


def build_collator(tokenizer, packing: bool):
    """`packing`: one row per batch, position ids restart per example and the first label of each example is
    masked. The row also carries the example boundaries (`cu_seq_lens_q/k`), which FlashAttention's varlen kernels
    and our `sdpa_packed` use; other kernels get a block-diagonal mask built from the position ids."""
    if packing:
        from transformers import DataCollatorWithFlattening

        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX, return_flash_attn_kwargs=True)
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
