"""Prompt-only data for the stages that generate their own completions (grpo, ppo): alpaca, sharegpt and
OpenAI-messages rows become a `prompt` (messages ending with the user turn), the reference `answer` and the
dataset's other columns, through the same registry, converters and chat template as SFT; `build_prompts` adds the
template's `prompt_ids` and caches the result like SFT data."""

import hashlib
import json
import logging

from tuneforge.data import cache, registry
from tuneforge.data.errors import DataError
from tuneforge.data.formats import role_tags, field_text, alpaca_to_messages, detect_format, row_tools, sharegpt_to_messages
from tuneforge.data.loaders import load_rows
from tuneforge.data.pipeline import LONGEST_KEPT, mix, split
from tuneforge.data.templates import render

log = logging.getLogger(__name__)

ANSWER = "answer"  # the column that holds an alpaca row's response or a conversation's final assistant turn
_PLACEHOLDER = "-"  # stands in for a missing answer so the SFT converter checks the row; dropped right after
_MAPPED = {"alpaca": ("prompt", "query", "response", "history", "system"), "sharegpt": ("messages", "system", "tools"),
           "openai": ("messages", "system", "tools")}


def _mapped_columns(attr) -> set[str]:
    """The columns the converter reads (the rest are kept as they are)."""
    return {c for c in (attr.column(k) for k in _MAPPED[attr.formatting]) if c}


def check_columns(attr, columns: list[str]) -> None:
    """Fail early, naming the column: a ranking dataset, a missing prompt/messages column, or an `answer` column
    beside a response column (which of the two is the reference would be a guess)."""
    if attr.ranking:
        raise DataError(f"dataset `{attr.name}` is a ranking (preference) dataset; stages grpo and ppo read prompts: "
                        f"use a prompt-only, alpaca or sharegpt dataset")
    required = "prompt" if attr.formatting == "alpaca" else "messages"
    col = attr.column(required)
    if col not in columns:
        raise DataError(f"dataset `{attr.name}` has no column `{col}` (its `{required}` column); its columns are {columns}. "
                        f"Fix `columns` for it in dataset_info.json")
    response = attr.column("response") if attr.formatting == "alpaca" else None
    if ANSWER in columns and ANSWER not in _mapped_columns(attr) and response in columns:
        raise DataError(f"dataset `{attr.name}` has both an `{ANSWER}` column and a response column `{response}`; the "
                        f"reference answer is taken from the response: map `response` to `{ANSWER}` in dataset_info.json "
                        f"or rename one of them")


def to_prompt(row: dict, attr) -> tuple[list[dict], str | None]:
    """(prompt messages, reference answer or None) of one row, with the SFT converter's checks: system first, then
    history turns, ending with the user turn. The answer is an alpaca row's response or a conversation's final
    assistant turn; a row without one is a prompt-only row.

    Raises:
        ValueError: a malformed row (missing, empty or wrongly typed fields, turns out of order), as SFT reports them.
    """
    if attr.formatting == "alpaca":
        response = attr.column("response")
        answer = field_text(row.get(response), response)
        messages = alpaca_to_messages({**row, response: answer or _PLACEHOLDER}, attr)
        return messages[:-1], answer or None
    col = attr.column("messages")
    convo = row.get(col)
    if not isinstance(convo, list) or not convo or not all(isinstance(m, dict) for m in convo):
        raise ValueError(f"`{col}` is empty or not a list of message objects")
    tags = role_tags(attr, convo[0])
    answered = convo[-1].get(tags["role_tag"]) == tags["assistant_tag"]
    if not answered:
        row = {**row, col: [*convo, {tags["role_tag"]: tags["assistant_tag"], tags["content_tag"]: _PLACEHOLDER}]}
    messages = sharegpt_to_messages(row, attr)
    if row_tools(row, attr) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        raise ValueError("the row holds tool definitions or tool calls, which stages grpo and ppo do not generate with yet "
                         "(the prompt would lose them); train tool calling with stage sft, or remove the row")
    if answered and row.get(ANSWER) is not None:
        raise ValueError(f"it has both a final assistant turn and an `{ANSWER}` value; keep one as the reference")
    return messages[:-1], messages[-1]["content"] if answered else None


def _convert(ds, attr, strict: bool):
    """Every row of one dataset as {prompt, answer, other columns}; bad rows skipped and reported (or fatal with
    `strict`)."""
    from datasets import Dataset

    attr.formatting = detect_format(attr, ds.column_names)
    check_columns(attr, ds.column_names)
    mapped = _mapped_columns(attr)
    rows, bad, first_bad = [], 0, None
    for i, row in enumerate(ds):
        try:
            prompt, answer = to_prompt(row, attr)
        except ValueError as e:
            bad += 1
            first_bad = first_bad or f"row {i}: {e}"
            if strict:
                raise DataError(f"dataset `{attr.name}` {first_bad} (strict: true stops at the first bad row; "
                                f"fix the row or drop strict to skip bad rows)") from None
            continue
        others = {k: v for k, v in row.items() if k not in mapped and k != ANSWER}
        rows.append({"prompt": prompt, ANSWER: answer if answer is not None else row.get(ANSWER), **others})
    if not rows:
        raise DataError(f"dataset `{attr.name}`: none of its {len(ds)} rows is usable; first problem: {first_bad}")
    if bad:
        log.warning("dataset `%s`: skipped %d of %d rows with missing, empty or wrongly typed fields; first: %s", attr.name, bad,
                    len(ds), first_bad)
    try:
        out = Dataset.from_list(rows)
    except Exception as e:  # pyarrow raises several types for a column whose rows hold different types
        raise DataError(f"dataset `{attr.name}`: its extra columns cannot be stored ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}); give each column one type in every row") from None
    return out, {"rows": len(ds), "skipped": bad, "first_skipped": first_bad}


def load_prompts(data_cfg, attrs=None):
    """Every training dataset as prompt rows, mixed like SFT data. Needs no tokenizer.

    Args:
        data_cfg: the DataSection.
        attrs: the resolved registry entries, if already looked up.

    Returns (Dataset, stats): columns `prompt` (list of {role, content}: system first if any, ending with the user
    turn), `answer` (the reference: an alpaca row's response or a conversation's final assistant turn, else the
    dataset's own `answer` column, else None) and the dataset's other columns as written; stats per dataset (rows,
    skipped, first_skipped).
    """
    attrs = attrs or registry.resolve(data_cfg.dataset, data_cfg.dataset_dir)
    parts, stats = [], {}
    for attr in attrs:
        ds = load_rows(attr)
        if data_cfg.max_samples is not None:
            ds = ds.select(range(min(data_cfg.max_samples, len(ds))))
        converted, stats[attr.name] = _convert(ds, attr, data_cfg.strict)
        parts.append(converted)
    return mix(_aligned(parts) if len(parts) > 1 else parts, data_cfg), stats


def _aligned(parts: list) -> list:
    """Datasets with the same columns (a column one dataset lacks is None there), so they can be mixed."""
    names = list(dict.fromkeys(c for p in parts for c in p.column_names))
    out = []
    for p in parts:
        for name in names:
            if name not in p.column_names:
                p = p.add_column(name, [None] * len(p))
        out.append(p.select_columns(names))
    return out


def _tokenize(ds, tokenizer, cutoff_len: int, keep_overlong: bool, progress=None):
    """Add `prompt_ids`: the chat template with the generation prompt (what `apply_chat_template(prompt,
    add_generation_prompt=True)` gives). A prompt longer than `cutoff_len` keeps its last cutoff_len tokens (the latest
    turns and the generation prompt; the system prompt goes first), or is dropped when `keep_overlong` is False.

    Returns (dataset, number of prompts truncated or dropped).
    """
    from tuneforge.data.cache import tokenizer_fingerprint

    total, done = len(ds), [0]

    def fn(row):
        text = render(tokenizer, row["prompt"], add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if progress is not None:
            done[0] += 1
            progress(done[0], total)
        return {"prompt_ids": ids}

    fingerprint = hashlib.sha256(json.dumps([ds._fingerprint, tokenizer_fingerprint(tokenizer)]).encode()).hexdigest()[:16]
    out = ds.map(fn, desc="tokenizing prompts", new_fingerprint=fingerprint)
    overlong = sum(len(ids) > cutoff_len for ids in out["prompt_ids"])
    if not overlong:
        return out, 0
    if keep_overlong:
        log.warning("%d of %d prompts are longer than cutoff_len %d and keep their last %d tokens; raise cutoff_len to keep "
                    "them whole", overlong, len(out), cutoff_len, cutoff_len)
        return out.map(lambda r: {"prompt_ids": r["prompt_ids"][-cutoff_len:]}, desc="truncating prompts"), overlong
    out = out.filter(lambda r: len(r["prompt_ids"]) <= cutoff_len, desc="dropping long prompts")
    if len(out) == 0:
        raise DataError(f"every prompt is longer than cutoff_len {cutoff_len}; raise cutoff_len", key="cutoff_len")
    log.warning("%d of %d prompts are longer than cutoff_len %d and were dropped; raise cutoff_len to keep them", overlong,
                overlong + len(out), cutoff_len)
    return out, overlong


def build_prompts(data_cfg, tokenizer, cache_dir: str | None = None, progress=None, keep_overlong: bool = True):
    """Prompt rows with `prompt_ids`, split into {"train", "eval"?} (val_size), from the cache when nothing changed.

    Args:
        data_cfg: the DataSection.
        tokenizer: with its chat template already set.
        cache_dir: cache root (default ~/.cache/tuneforge).
        progress: called as progress(done, total) while training prompts are tokenized.
        keep_overlong: truncate prompts longer than cutoff_len (keeping the end); False drops them instead (for a
            trainer that re-renders `prompt` itself and would generate from the whole of it).

    Returns (datasets, stats): rows keep `prompt`, `answer` and the other columns; stats hold per-dataset row counts
    and skipped rows (`datasets`), `{part}_examples`, `train_tokens` (prompt tokens), `train_longest` (the longest
    prompts' lengths, longest first), `{part}_overlong` (prompts truncated or dropped).
    """
    attrs = registry.resolve(data_cfg.dataset, data_cfg.dataset_dir)

    def build_parts():
        ds, per_dataset = load_prompts(data_cfg, attrs)
        parts, stats = {}, {"datasets": per_dataset}
        for name, part in split(ds, data_cfg.val_size, data_cfg.seed).items():
            parts[name], stats[f"{name}_overlong"] = _tokenize(part, tokenizer, data_cfg.cutoff_len, keep_overlong,
                                                               progress if name == "train" else None)
            stats[f"{name}_examples"] = len(parts[name])
        lengths = [len(ids) for ids in parts["train"]["prompt_ids"]]
        stats.update(train_tokens=sum(lengths), train_longest=sorted(lengths, reverse=True)[:LONGEST_KEPT])
        return parts, stats

    return cache.cached(data_cfg, attrs, tokenizer, cache_dir, "prompts", build_parts, keys=("template",), rows="prompts",
                        keep_overlong=keep_overlong)
