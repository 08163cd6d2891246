"""Varlen attention for packed rows on any device: SDPA run once per packed example.

A packed row holds several examples back to back. Plain SDPA needs a block-diagonal (row x row) mask for it,
and computes every score of the full square, most of which the mask throws away. With the sequence
boundaries the packing collator provides (`cu_seq_lens_q`, as FlashAttention's varlen kernels take them),
this runs causal SDPA on each example alone: exact, no mask, no wasted scores. Batches that are not packed
go to transformers' own SDPA unchanged.
"""

import torch

NAME = "sdpa_packed"


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1 or query.shape[2] != key.shape[2] or kwargs.get("cu_seq_lens_k") is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    bounds = cu.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        out, _ = sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], None,
                                        dropout=dropout, scaling=scaling, is_causal=True)
        outs.append(out)
    return torch.cat(outs, dim=1), None


def register() -> str:
    """Make `sdpa_packed` a valid `attn_implementation`; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # packed rows do not read the mask; padded batches need it
    return NAME
