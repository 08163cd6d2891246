"""Perplexity on plain-text datasets (`perplexity_dataset`), read the way stage pt reads them (data/text.py): each
document tokenized with EOS at its end, a document longer than cutoff_len cut into pieces scored on their own.
Perplexity is exp(total negative log-likelihood / tokens predicted); a piece's first token has nothing before it
and is not predicted, as in stage pt's loss."""

import dataclasses
import math


def load_pieces(data_cfg, attrs, tokenizer) -> tuple[list[list[int]], int]:
    """(token pieces of at most cutoff_len, documents) of the datasets `attrs` (their registry entries)."""
    from tuneforge.data.text import load_documents, to_blocks, tokenize_documents

    docs, _ = load_documents(data_cfg, attrs)
    pieces = to_blocks(tokenize_documents(docs, tokenizer), data_cfg.cutoff_len, packing=False)
    return [list(x) for x in pieces["input_ids"]], len(docs)


def text_config(data_cfg, datasets: list[str]):
    """The DataSection that reads `datasets` whole (no held-out split)."""
    return dataclasses.replace(data_cfg, dataset=list(datasets), val_size=0.0, streaming=False)


def negative_log_likelihood(model, pieces: list[list[int]], batch_size: int, pad: int) -> tuple[float, int]:
    """(summed NLL of every predicted token, tokens predicted), longest pieces first, right-padded."""
    import torch

    order = sorted(range(len(pieces)), key=lambda i: (-len(pieces[i]), i))
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = [pieces[i] for i in order[start:start + batch_size] if len(pieces[i]) > 1]
        if not batch:
            continue
        width = max(len(p) for p in batch)
        ids = torch.tensor([p + [pad] * (width - len(p)) for p in batch], device=device)
        mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in batch], device=device)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)
        picked = logprobs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) * mask[:, 1:]
        total -= picked.sum().item()
        count += int(mask[:, 1:].sum().item())
    return total, count


def evaluate_perplexity(model, tokenizer, pieces: list[list[int]], documents: int, batch_size: int) -> dict:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    nll, tokens = negative_log_likelihood(model, pieces, batch_size, pad)
    loss = nll / max(tokens, 1)
    return {"documents": documents, "tokens": tokens, "loss": round(loss, 6), "perplexity": round(math.exp(loss), 4)}
