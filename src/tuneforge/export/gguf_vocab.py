"""A Hugging Face byte-level BPE tokenizer as GGUF tokenizer metadata (llama.cpp's `gpt2` tokenizer model).

The vocabulary is written by id, special added tokens as control tokens, the merges in rank order, and the
pre-tokenizer as the name llama.cpp knows it by; rows the embedding has beyond the vocabulary get `[PAD<id>]`."""

import json

from tuneforge import TuneforgeError

# The text-splitting regexes of the byte-level BPE families llama.cpp names (`tokenizer.ggml.pre`).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
SPLIT_NAMES = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}


def _pre_tokenizer_name(pre: dict | None) -> str | None:
    """llama.cpp's name for this tokenizers pre-tokenizer (as in tokenizer.json), None when it has none."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        return SPLIT_NAMES.get(steps[0].get("pattern", {}).get("Regex"))
    return None


def _check_byte_level_bpe(spec: dict) -> None:
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        kind = f"{model.get('type')} with byte fallback" if model.get("byte_fallback") else model.get("type")
        raise TuneforgeError(f"export_format gguf writes byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen 2/3); this model's "
                             f"tokenizer is {kind} (sentencepiece-style, e.g. Mistral or Llama 2), which is not written yet; "
                             f"use export_format: hf and convert with llama.cpp's convert_hf_to_gguf.py")


def end_of_turn_token(tokenizer) -> str | None:
    """The special token that closes an assistant turn in the chat template (`<|im_end|>`, `<|eot_id|>`), if one does."""
    from tuneforge.export.modelfile import _wrappers

    wrappers = _wrappers(tokenizer) if tokenizer.chat_template else None
    suffix = wrappers["assistant_suffix"].strip() if wrappers else ""
    return suffix if suffix in tokenizer.all_special_tokens else None


def vocab_metadata(tokenizer, n_rows: int, pre: str | None = None) -> dict:
    """The tokenizer fields of a GGUF file, keyed by gguf's `Keys.Tokenizer` names.

    Args:
        tokenizer: a fast (tokenizers-backed) byte-level BPE tokenizer.
        n_rows: rows of the model's embedding matrix; the token list is padded to it.
        pre: llama.cpp's pre-tokenizer name when known from the source (a GGUF-loaded base keeps its own).

    Raises:
        TuneforgeError: a tokenizer that is not byte-level BPE, has more tokens than embedding rows, or splits
            text in a way llama.cpp has no name for.
    """
    from gguf import Keys, TokenType

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    _check_byte_level_bpe(spec)
    pre = pre or _pre_tokenizer_name(spec.get("pre_tokenizer"))
    if pre is None:
        raise TuneforgeError(f"export_format gguf: the tokenizer's pre-tokenizer {json.dumps(spec.get('pre_tokenizer'))[:200]} "
                             f"is not one llama.cpp names (gpt-2, smollm, llama-bpe, qwen2), so llama.cpp would split text "
                             f"differently; use export_format: hf")
    vocab = tokenizer.get_vocab()
    if len(vocab) > n_rows or max(vocab.values()) >= n_rows:
        raise TuneforgeError(f"the tokenizer has {len(vocab)} tokens but the model's embedding only {n_rows} rows; "
                             f"resize the embeddings (model.resize_token_embeddings) before exporting")
    tokens = [f"[PAD{i}]" for i in range(n_rows)]
    types = [int(TokenType.UNUSED)] * n_rows
    for text, i in vocab.items():
        tokens[i], types[i] = text, int(TokenType.NORMAL)
    for i, added in tokenizer.added_tokens_decoder.items():
        types[i] = int(TokenType.CONTROL if added.special else TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    meta = {Keys.Tokenizer.MODEL: "gpt2", Keys.Tokenizer.PRE: pre, Keys.Tokenizer.LIST: tokens,
            Keys.Tokenizer.TOKEN_TYPE: types, Keys.Tokenizer.MERGES: merges}
    ids = {Keys.Tokenizer.BOS_ID: tokenizer.bos_token_id, Keys.Tokenizer.EOS_ID: tokenizer.eos_token_id,
           Keys.Tokenizer.UNK_ID: tokenizer.unk_token_id, Keys.Tokenizer.PAD_ID: tokenizer.pad_token_id}
    eot = end_of_turn_token(tokenizer)
    if eot is not None:
        ids[Keys.Tokenizer.EOT_ID] = tokenizer.convert_tokens_to_ids(eot)
    meta.update({k: v for k, v in ids.items() if v is not None})
    probe = tokenizer("a").input_ids
    meta[Keys.Tokenizer.ADD_BOS] = bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id
    meta[Keys.Tokenizer.ADD_EOS] = bool(probe) and tokenizer.eos_token_id is not None and probe[-1] == tokenizer.eos_token_id
    if tokenizer.chat_template:
        meta[Keys.Tokenizer.CHAT_TEMPLATE] = tokenizer.chat_template
    return meta
