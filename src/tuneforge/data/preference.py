"""Preference data: paired rows (prompt, chosen, rejected) for the dpo and rm stages and unpaired rows (prompt,
completion, label) for kto, from LLaMA-Factory's `ranking: true` and `kto_tag` entries in alpaca, sharegpt or OpenAI
`messages` style. Rows go through the SFT converters (formats.py) and chat template, so a prompt encodes exactly as
`apply_chat_template(prompt, add_generation_prompt=True)`; tokenized rows are cached like SFT's (cache.py)."""

import hashlib
import json
import logging

from tuneforge.data import cache, registry
from tuneforge.data.cache import tokenizer_fingerprint
from tuneforge.data.errors import DataError
from tuneforge.data.formats import role_tags, field_text, alpaca_to_messages, detect_format, row_tools, sharegpt_to_messages
from tuneforge.data.loaders import load_rows
from tuneforge.data.pipeline import LONGEST_KEPT, mix, split
from tuneforge.data.templates import render

log = logging.getLogger(__name__)

# Column names used when an entry's `columns` does not name them (LLaMA-Factory's demo files use these).
PREFERENCE_COLUMNS = {"chosen": "chosen", "rejected": "rejected", "kto_tag": "kto_tag"}
BAD_ROWS_KEPT = 20  # row numbers of bad rows kept in the stats


def _column(attr, key: str) -> str:
    return attr.columns.get(key) or PREFERENCE_COLUMNS.get(key) or attr.column(key)


def _is_ranking(attr, columns: list[str]) -> bool:
    """Registered entries say `ranking: true`; an unregistered file is paired when it has chosen/rejected columns."""
    return attr.ranking or (not attr.tags_given and not attr.columns and {"chosen", "rejected"} <= set(columns))


def _resolve_format(attr, rows) -> None:
    """Fix `attr.formatting` (and the prompt column of TRL-style `prompt` files) for an unregistered file."""
    columns = rows.column_names
    if attr.formatting == "auto" and "prompt" in columns and not {"instruction", "messages", "conversations"} & set(columns):
        first = rows[0].get("prompt") if len(rows) else None
        attr.formatting = "openai" if isinstance(first, list) else "alpaca"
        attr.columns.setdefault("messages" if attr.formatting == "openai" else "prompt", "prompt")
        attr.columns.setdefault("response", "completion")
    attr.formatting = detect_format(attr, columns)


def _check_columns(attr, columns: list[str], keys: tuple[str, ...]) -> None:
    """Fail before reading rows, naming the column, when the entry points at a column the file lacks."""
    base = "prompt" if attr.formatting == "alpaca" else "messages"
    for key in (base, *keys):
        col = _column(attr, key)
        if col not in columns:
            raise DataError(f"dataset `{attr.name}` has no column `{col}` (its `{key}` column); its columns are {columns}. "
                            f"Fix `columns` for it in dataset_info.json")


def _reply(value, attr, key: str, tags: dict) -> dict:
    """A chosen/rejected value as a message in the file's tag naming: a message object, a one-message list, or text."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        return {tags["role_tag"]: tags["assistant_tag"], tags["content_tag"]: value}
    if not isinstance(value, dict):
        col = _column(attr, key)
        raise ValueError(f"`{col}` must be a message object or text, not {type(value).__name__}" if value is not None
                         else f"`{col}` is missing")
    return value


def _prompt_and_reply(row: dict, attr, key: str) -> tuple[list[dict], str]:
    """The prompt messages and the reply text of `row` with its `key` column (chosen, rejected or response)."""
    if attr.formatting == "alpaca":
        reply_col = _column(attr, key)
        text = field_text(row.get(reply_col), reply_col)
        if not text:
            raise ValueError(f"`{reply_col}` is empty or missing")
        messages = alpaca_to_messages({**row, attr.column("response"): text}, attr)
    else:
        col = attr.column("messages")
        convo = row.get(col)
        if not isinstance(convo, list) or not convo or not isinstance(convo[0], dict):
            raise ValueError(f"`{col}` is empty or not a list of messages")
        if key == "response":  # the conversation ends with the reply
            messages = sharegpt_to_messages(row, attr)
        else:
            reply = _reply(row.get(_column(attr, key)), attr, key, role_tags(attr, convo[0]))
            messages = sharegpt_to_messages({**row, col: convo + [reply]}, attr)
    if row_tools(row, attr) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        raise ValueError(f"the row holds tool definitions or tool calls, which stage {'kto' if key == 'response' else 'dpo/rm'} "
                         f"does not train yet (they would be dropped from the prompt or leave an empty reply); train "
                         f"tool calling with stage sft, or remove the row")
    return messages[:-1], messages[-1]["content"]


def pair_from_row(row: dict, attr) -> dict:
    """One ranking row -> {"prompt": messages, "chosen": text, "rejected": text}; ValueError says what is wrong."""
    prompt, chosen = _prompt_and_reply(row, attr, "chosen")
    _, rejected = _prompt_and_reply(row, attr, "rejected")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _tag(value, col: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # csv holds text only
        return value.strip().lower() == "true"
    raise ValueError(f"`{col}` must be true or false, not {value!r}")


def unpaired_from_row(row: dict, attr) -> list[dict]:
    """One row -> unpaired rows {"prompt", "completion", "label"}: a `kto_tag` row as it is; a ranking row becomes its
    chosen (desirable) and its rejected (undesirable) reply."""
    if attr.ranking:
        pair = pair_from_row(row, attr)
        return [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
                {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]
    label = _tag(row.get(_column(attr, "kto_tag")), _column(attr, "kto_tag"))
    prompt, completion = _prompt_and_reply(row, attr, "response")
    return [{"prompt": prompt, "completion": completion, "label": label}]


def _convert(rows, attr, kind: str, strict: bool) -> tuple[list[dict], dict]:
    """Every row converted; bad rows skipped and reported with their row numbers (or the first raised with `strict`)."""
    out, bad = [], []
    for i, row in enumerate(rows):
        try:
            if kind == "pairwise":
                out.append(pair_from_row(row, attr))
            else:
                out.extend(unpaired_from_row(row, attr))
        except ValueError as e:
            bad.append((i, str(e)))
            if strict:
                raise DataError(f"dataset `{attr.name}` row {i}: {e} (strict: true stops at the first bad row; fix the row "
                                f"or drop strict to skip bad rows)") from None
    shown = "; ".join(f"row {i}: {m}" for i, m in bad[:5]) + ("; ..." if len(bad) > 5 else "")
    if not out:
        raise DataError(f"dataset `{attr.name}`: none of its {len(rows)} rows is usable: {shown}")
    if bad:
        log.warning("dataset `%s`: skipped %d of %d rows: %s", attr.name, len(bad), len(rows), shown)
    return out, {"rows": len(rows), "skipped": len(bad), "bad_rows": [[i, m] for i, m in bad[:BAD_ROWS_KEPT]]}


def _load(data_cfg, kind: str):
    """Every training dataset as `kind` rows ("pairwise" or "unpaired"), mixed as data_cfg says; stats per dataset."""
    from datasets import Dataset

    parts, stats = [], {}
    for attr in registry.resolve(data_cfg.dataset, data_cfg.dataset_dir):
        rows = load_rows(attr)
        if data_cfg.max_samples is not None:
            rows = rows.select(range(min(data_cfg.max_samples, len(rows))))
        attr.ranking = _is_ranking(attr, rows.column_names)
        _resolve_format(attr, rows)
        if kind == "pairwise" and not attr.ranking:
            raise DataError(f"dataset `{attr.name}` is not a preference dataset: register it with `ranking: true` and its "
                            f"`chosen` and `rejected` columns (stages dpo and rm read pairs; kto reads kto_tag rows)")
        if not attr.ranking and _column(attr, "kto_tag") not in rows.column_names:
            raise DataError(f"dataset `{attr.name}` has neither `ranking: true` nor a `kto_tag` column "
                            f"(`{_column(attr, 'kto_tag')}`); stage kto needs one of them in dataset_info.json")
        reply = ("response",) if attr.formatting == "alpaca" else ()
        _check_columns(attr, rows.column_names, ("chosen", "rejected") if attr.ranking else ("kto_tag", *reply))
        converted, stats[attr.name] = _convert(rows, attr, kind, data_cfg.strict)
        parts.append(Dataset.from_list(converted))
    return mix(parts, data_cfg), stats


def load_pairs(data_cfg):
    """Every training dataset as (Dataset with prompt (messages, system first), chosen (text), rejected (text), stats).

    Raises:
        DataError: naming the dataset, and the rows (by number) when none is usable or `strict` is set.
    """
    return _load(data_cfg, "pairwise")


def load_unpaired(data_cfg):
    """Every training dataset as (Dataset with prompt (messages), completion (text), label (desirable or not), stats);
    a ranking dataset gives one desirable and one undesirable row per pair."""
    return _load(data_cfg, "unpaired")


def fit_lengths(prompt_len: int, reply_len: int, cutoff_len: int) -> tuple[int, int]:
    """How many prompt and reply tokens fit in cutoff_len (LLaMA-Factory's split): the reply keeps everything when it
    is under half, else what the prompt leaves when the prompt is under half, else a share proportional to its length."""
    if reply_len * 2 < cutoff_len:
        reply_max = cutoff_len
    elif prompt_len * 2 < cutoff_len:
        reply_max = cutoff_len - prompt_len
    else:
        reply_max = int(cutoff_len * reply_len / (prompt_len + reply_len))
    reply = min(reply_max, reply_len)
    return min(max(cutoff_len - reply, 0), prompt_len), reply


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_replies(tokenizer, prompt: list[dict], replies: list[str], cutoff_len: int) -> tuple[list[int], list[list[int]]]:
    """prompt_ids (the chat template on the prompt with the generation prompt) and, per reply, the tokens the full
    conversation adds after that text (the end-of-turn marker included).

    Truncation: the prompt and the longest reply share cutoff_len as `fit_lengths` says; the prompt keeps its end (the
    assistant header next to the reply), each reply its start.

    Raises:
        DataError (key template): when the template renders the prompt differently once a reply follows.
    """
    prompt_text = render(tokenizer, prompt, add_generation_prompt=True)
    reply_ids = []
    for reply in replies:
        full = render(tokenizer, prompt + [{"role": "assistant", "content": reply}])
        if not full.startswith(prompt_text):
            raise DataError("the chat template renders the prompt differently once a reply follows, so the reply cannot be "
                            "separated from it; set `template` to chatml, llama3 or alpaca", key="template")
        reply_ids.append(_ids(tokenizer, full[len(prompt_text):]))
    prompt_ids = _ids(tokenizer, prompt_text)
    keep_prompt, keep_reply = fit_lengths(len(prompt_ids), max(map(len, reply_ids)), cutoff_len)
    return prompt_ids[len(prompt_ids) - keep_prompt:], [ids[:keep_reply] for ids in reply_ids]


def encode_pair(tokenizer, prompt: list[dict], chosen: str, rejected: str, cutoff_len: int) -> dict:
    """{"prompt_ids", "chosen_ids", "rejected_ids"} of one pair (see `encode_replies` for truncation)."""
    prompt_ids, (chosen_ids, rejected_ids) = encode_replies(tokenizer, prompt, [chosen, rejected], cutoff_len)
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}


def encode_unpaired(tokenizer, prompt: list[dict], completion: str, cutoff_len: int) -> dict:
    """{"prompt_ids", "completion_ids"} of one unpaired row (see `encode_replies` for truncation)."""
    prompt_ids, (completion_ids,) = encode_replies(tokenizer, prompt, [completion], cutoff_len)
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids}


REPLIES = {"pairwise": ("chosen", "rejected"), "unpaired": ("completion",)}


def _tokenize(ds, tokenizer, kind: str, cutoff_len: int, progress=None):
    """Encode every row; rows left with an empty reply after truncation are dropped (warned)."""
    total, done = len(ds), [0]

    def fn(row):
        if kind == "pairwise":
            out = encode_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"], cutoff_len)
        else:
            out = {**encode_unpaired(tokenizer, row["prompt"], row["completion"], cutoff_len), "label": row["label"]}
        if progress is not None:
            done[0] += 1
            progress(done[0], total)
        return out

    # the fingerprint names what the result depends on (the progress callback in `fn` cannot be hashed)
    fingerprint = hashlib.sha256(json.dumps([ds._fingerprint, tokenizer_fingerprint(tokenizer), kind, cutoff_len]).encode())
    out = ds.map(fn, remove_columns=ds.column_names, desc=f"tokenizing {kind} rows", new_fingerprint=fingerprint.hexdigest()[:16])
    keys = [f"{r}_ids" for r in REPLIES[kind]]
    kept = out.filter(lambda r: all(r[k] for k in keys), desc="dropping rows with no reply token")
    if len(kept) == 0:
        raise DataError(f"no row keeps a reply token within cutoff_len {cutoff_len}; raise cutoff_len", key="cutoff_len")
    if len(kept) < len(out):
        log.warning("%d of %d rows have no reply token within cutoff_len %d and were dropped", len(out) - len(kept), len(out),
                    cutoff_len)
    return kept


def _row_stats(parts: dict, kind: str) -> dict:
    """Counts of the tokenized parts; `train_longest` holds prompt + longest reply per row, longest first."""
    train, keys = parts["train"], [f"{r}_ids" for r in REPLIES[kind]]
    prompt_lens = [len(p) for p in train["prompt_ids"]]
    reply_lens = [[len(x) for x in train[k]] for k in keys]
    lengths = [p + max(r) for p, *r in zip(prompt_lens, *reply_lens)]
    stats = {**{f"{n}_examples": len(p) for n, p in parts.items()}, "train_tokens": sum(prompt_lens) * len(keys) + sum(map(sum, reply_lens)),
             "train_supervised_tokens": sum(map(sum, reply_lens)), "train_longest": sorted(lengths, reverse=True)[:LONGEST_KEPT]}
    if kind == "unpaired":
        stats["train_desirable"] = sum(train["label"])
        stats["train_undesirable"] = len(train) - stats["train_desirable"]
    return stats


def _build(kind: str, data_cfg, tokenizer, cache_dir=None, progress=None):
    attrs = registry.resolve(data_cfg.dataset, data_cfg.dataset_dir)

    def build_parts():
        ds, per_dataset = _load(data_cfg, kind)
        if kind == "unpaired":  # KTO reads rows in order (its KL term pairs neighbours): no pair's halves side by side
            ds = ds.shuffle(seed=data_cfg.seed).flatten_indices()
        parts = {name: _tokenize(part, tokenizer, kind, data_cfg.cutoff_len, progress if name == "train" else None)
                 for name, part in split(ds, data_cfg.val_size, data_cfg.seed).items()}
        return parts, {"datasets": per_dataset, **_row_stats(parts, kind)}

    return cache.cached(data_cfg, attrs, tokenizer, cache_dir, f"{kind} data", build_parts, keys=("template",), kind=kind)


def build_pairs(data_cfg, tokenizer, cache_dir: str | None = None, progress=None):
    """Tokenized pairs {"train", "eval"?} (columns prompt_ids, chosen_ids, rejected_ids) and stats, from the cache when
    nothing changed. `stats["train_longest"]`: prompt + longer reply per row, longest first (the memory check reads it).

    Args:
        data_cfg: the DataSection.
        tokenizer: with its chat template already set.
        cache_dir: cache root (default ~/.cache/tuneforge).
        progress: called as progress(done, total) while training rows are tokenized.
    """
    return _build("pairwise", data_cfg, tokenizer, cache_dir, progress)


def build_unpaired(data_cfg, tokenizer, cache_dir: str | None = None, progress=None):
    """Tokenized unpaired rows {"train", "eval"?} (columns prompt_ids, completion_ids, label), shuffled once with the
    data seed, and stats (with train_desirable / train_undesirable counts), cached like `build_pairs`."""
    return _build("unpaired", data_cfg, tokenizer, cache_dir, progress)
