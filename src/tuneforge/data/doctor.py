"""`tuneforge data check`: what the training run will see of its datasets, with the tokenizer alone (no weights).

For each dataset: the registry entry and file it resolves to, its rows, bad rows grouped by reason (first examples
with their row numbers), sharegpt role tags found against the configured ones, token lengths against cutoff_len,
and the first examples rendered through the chat template with the supervised tokens marked `[[...]]`. For preference
data (stages dpo, rm) and KTO data, the balance instead: identical replies, which side is longer, desirable against
undesirable rows."""

import os
import re
import statistics

from tuneforge.data.errors import DataError

EXAMPLES_PER_REASON = 3
RENDERED_EXAMPLES = 2
OPEN, CLOSE, CUT = "[[", "]]", "<<cutoff_len>>"
NO_LIMIT = 1 << 40
MEASURED_PAIRS = 2000  # pairs whose token lengths are measured for the balance


def _reason(message: str) -> str:
    """The reason key of a bad-row message: the message with its numbers replaced, so one problem groups as one."""
    return re.sub(r"\d+", "N", message)


def _bad_rows(bad: list[tuple[int, str]]) -> list[dict]:
    groups: dict[str, dict] = {}
    for row, message in bad:
        g = groups.setdefault(_reason(message), {"reason": _reason(message), "count": 0, "examples": []})
        g["count"] += 1
        if len(g["examples"]) < EXAMPLES_PER_REASON:
            g["examples"].append({"row": row, "message": message})
    return sorted(groups.values(), key=lambda g: -g["count"])


def _roles(attr, rows) -> dict | None:
    """The role-field values of a sharegpt/openai dataset against the configured tags; unknown ones flagged."""
    from tuneforge.data.formats import role_tags

    if attr.formatting not in ("sharegpt", "openai"):
        return None
    convos = [r.get(attr.column("messages")) for r in rows]
    convos = [c for c in convos if isinstance(c, list) and c and isinstance(c[0], dict)]
    if not convos:
        return None
    tags = role_tags(attr, convos[0][0])
    found: dict[str, int] = {}
    for convo in convos:
        for m in convo:
            if isinstance(m, dict):
                key = str(m.get(tags["role_tag"]))
                found[key] = found.get(key, 0) + 1
    configured = {tags[k]: k.removesuffix("_tag") for k in ("user_tag", "assistant_tag", "system_tag", "observation_tag",
                                                             "function_tag") if tags.get(k)}
    return {"role_field": tags["role_tag"], "found": found, "configured": configured,
            "unknown": sorted(t for t in found if t not in configured)}


def _marked(tokenizer, ids: list[int], labels: list[int], cutoff_len: int) -> str:
    """The example as training sees it: supervised spans wrapped in [[ ]], cut at cutoff_len (the cut marked)."""
    kept, out, start = min(len(ids), cutoff_len), [], 0
    for i in range(1, kept + 1):
        if i == kept or (labels[i] != -100) != (labels[start] != -100):
            text = tokenizer.decode(ids[start:i], skip_special_tokens=False)
            out.append(f"{OPEN}{text}{CLOSE}" if labels[start] != -100 else text)
            start = i
    if kept < len(ids):
        out.append(f"{CUT[:-2]}: {len(ids) - kept} more tokens dropped{CUT[-2:]}")
    return "".join(out)


def _lengths(encoded: list[tuple[int, list[int], list[int]]], cutoff_len: int) -> dict:
    sizes = [len(ids) for _, ids, _ in encoded]
    if not sizes:
        return {"min": 0, "median": 0, "max": 0, "truncated": 0, "no_supervised": 0, "no_supervised_rows": []}
    lost = [row for row, _, labels in encoded if all(x == -100 for x in labels[:cutoff_len])]
    return {"min": min(sizes), "median": statistics.median(sizes), "max": max(sizes),
            "truncated": sum(1 for n in sizes if n > cutoff_len), "no_supervised": len(lost), "no_supervised_rows": lost[:10]}


def check_dataset(attr, data_cfg, tokenizer) -> dict:
    """The report of one dataset; `error` is set (and nothing else is) when it cannot be read or has no usable row."""
    from tuneforge.data.formats import CONVERTERS, check_columns, detect_format, row_tools
    from tuneforge.data.loaders import load_rows
    from tuneforge.data.templates import TOOLS_TEXT_FORMAT, encode, renders_tools

    entry = {"name": attr.name, "file": attr.path, "format": attr.formatting, "rows": 0, "usable": 0}
    try:
        rows = load_rows(attr)
        if data_cfg.max_samples is not None:
            rows = rows.select(range(min(data_cfg.max_samples, len(rows))))
        entry["rows"] = len(rows)
        attr.formatting = entry["format"] = detect_format(attr, rows.column_names)
        check_columns(attr, rows.column_names)
    except DataError as e:
        return {**entry, "error": str(e)}
    convert, good, bad = CONVERTERS[attr.formatting], [], []
    for i, row in enumerate(rows):
        try:
            good.append((i, convert(row, attr), row_tools(row, attr)))
        except ValueError as e:
            bad.append((i, str(e)))
    entry.update(usable=len(good), bad=len(bad), bad_reasons=_bad_rows(bad), roles=_roles(attr, rows))
    if not good:
        first = f"row {bad[0][0]}: {bad[0][1]}" if bad else "the file has no rows"
        return {**entry, "error": f"dataset `{attr.name}`: none of its {len(rows)} rows is usable; first problem: {first}"}
    cutoff = data_cfg.cutoff_len
    if any(tools or any("tool_calls" in x for x in m) for _, m, tools in good):
        entry["tools"] = ("rendered by the chat template itself" if renders_tools(tokenizer)
                         else f"written as text (the chat template does not render tools): {TOOLS_TEXT_FORMAT}")
    encoded = [(i, *encode(tokenizer, m, NO_LIMIT, data_cfg.train_on_prompt, data_cfg.mask_history, tools))
               for i, m, tools in good]
    entry["lengths"] = _lengths(encoded, cutoff)
    entry["examples"] = [{"row": i, "tokens": len(ids), "supervised": sum(1 for x in labels[:cutoff] if x != -100),
                          "text": _marked(tokenizer, ids, labels, cutoff)} for i, ids, labels in encoded[:RENDERED_EXAMPLES]]
    return entry


def check_preference(attr, data_cfg, tokenizer, kind: str) -> dict:
    """The report of one preference (`pairwise`) or KTO (`unpaired`) dataset: rows, bad rows, the balance (pairs whose
    replies are the same, how often the chosen reply is the longer one; desirable against undesirable rows), token
    lengths and the first examples rendered."""
    from types import SimpleNamespace

    from tuneforge.data import preference
    from tuneforge.data.templates import render as template_render

    entry = {"name": attr.name, "file": attr.path, "format": attr.formatting, "rows": 0, "usable": 0, "kind": kind}
    one = SimpleNamespace(**{**vars(data_cfg), "dataset": [attr.name], "strict": False})
    try:
        rows, stats = (preference.load_pairs if kind == "pairwise" else preference.load_unpaired)(one)
    except DataError as e:
        return {**entry, "error": str(e)}
    st = stats[attr.name]
    bad = [(i, m) for i, m in st.get("bad_rows", [])]
    entry.update(rows=st["rows"], usable=st["rows"] - st["skipped"], bad=st["skipped"], bad_reasons=_bad_rows(bad),
                 format=attr.formatting)
    if kind == "pairwise":
        encoded = [preference.encode_pair(tokenizer, r["prompt"], r["chosen"], r["rejected"], NO_LIMIT)
                   for r in rows.select(range(min(len(rows), MEASURED_PAIRS)))]
        lengths = [(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in encoded]
        same = sum(1 for r in rows if r["chosen"].strip() == r["rejected"].strip())
        entry["balance"] = {"pairs": len(rows), "identical_replies": same,
                            "chosen_longer": sum(1 for c, r in lengths if c > r), "rejected_longer": sum(1 for c, r in lengths if r > c),
                            "median_chosen_tokens": statistics.median(c for c, _ in lengths),
                            "median_rejected_tokens": statistics.median(r for _, r in lengths)}
        shown = [{"row": i, "text": render_pair(tokenizer, r)} for i, r in enumerate(rows.select(range(min(len(rows), RENDERED_EXAMPLES))))]
    else:
        desirable = sum(1 for x in rows["label"] if x)
        entry["balance"] = {"desirable": desirable, "undesirable": len(rows) - desirable}
        shown = [{"row": i, "text": template_render(tokenizer, r["prompt"], add_generation_prompt=True) + f"{OPEN}{r['completion']}{CLOSE}"
                  + ("  (desirable)" if r["label"] else "  (undesirable)")}
                 for i, r in enumerate(rows.select(range(min(len(rows), RENDERED_EXAMPLES))))]
    entry["examples"] = shown
    return entry


def check_text(attr, data_cfg, tokenizer) -> dict:
    """The report of one plain-text dataset (stage pt): documents, empty and bad rows, token lengths of the documents
    (each with its EOS), how many blocks of cutoff_len they fill, and the first documents."""
    from tuneforge.data import text

    entry = {"name": attr.name, "file": attr.path, "format": "text", "rows": 0, "usable": 0, "kind": "text"}
    try:
        rows = text.load_text_rows(attr)
        if data_cfg.max_samples is not None:
            rows = rows.select(range(min(data_cfg.max_samples, len(rows))))
        docs, st = text.to_documents(rows, attr, False)
    except DataError as e:
        return {**entry, "error": str(e)}
    bad = [(int(st["first_skipped"].split(":")[0].split()[1]), st["first_skipped"].split(": ", 1)[1])] if st["skipped"] else []
    entry.update(rows=st["rows"], usable=st["documents"], bad=st["skipped"], empty=st["empty"], bad_reasons=_bad_rows(bad))
    sizes = [len(tokenizer(d, add_special_tokens=True)["input_ids"]) + 1 for d in docs]
    entry["documents"] = {"count": len(docs), "tokens": sum(sizes), "min": min(sizes), "median": statistics.median(sizes),
                          "max": max(sizes), "longer_than_cutoff": sum(1 for n in sizes if n > data_cfg.cutoff_len),
                          "blocks_at_least": -(-sum(sizes) // data_cfg.cutoff_len)}
    entry["examples"] = [{"row": i, "text": d[:400] + ("..." if len(d) > 400 else "")} for i, d in enumerate(docs[:RENDERED_EXAMPLES])]
    return entry


def render_pair(tokenizer, row) -> str:
    """A pair as training sees it: the prompt through the chat template, then each reply marked."""
    from tuneforge.data.templates import render as template_render

    return (template_render(tokenizer, row["prompt"], add_generation_prompt=True) + f"\n  chosen:   {OPEN}{row['chosen']}{CLOSE}"
            + f"\n  rejected: {OPEN}{row['rejected']}{CLOSE}")


def run(cfg, kind: str = "supervised") -> dict:
    """Check the config's datasets with the tokenizer alone. Raises DataError/ConfigError when the config cannot be
    checked at all (registry, files, model path); an unreadable dataset is in the report with its `error`."""
    from tuneforge import preflight
    from tuneforge.data import registry
    from tuneforge.data.cache import cache_root
    from tuneforge.data.templates import apply_template
    from tuneforge.models.loader import load_tokenizer_only

    preflight.check(cfg)
    data = cfg.data
    attrs = registry.resolve(data.dataset, data.dataset_dir)
    tokenizer = load_tokenizer_only(cfg.model, cache_root(cfg.model.cache_dir))
    template = apply_template(tokenizer, data.template)
    if kind in ("pairwise", "unpaired"):
        datasets = [check_preference(attr, data, tokenizer, kind) for attr in attrs]
    elif kind == "text":
        datasets = [check_text(attr, data, tokenizer) for attr in attrs]
    else:
        datasets = [check_dataset(attr, data, tokenizer) for attr in attrs]
    return {"model": cfg.model.model_name_or_path, "template": data.template if template != "tokenizer" else f"{data.template} "
            "(the tokenizer's own)", "cutoff_len": data.cutoff_len, "train_on_prompt": data.train_on_prompt,
            "mask_history": data.mask_history, "max_samples": data.max_samples, "datasets": datasets,
            "ok": all("error" not in d for d in datasets)}


def failure(report: dict) -> DataError | None:
    """The error to exit with when a dataset is unusable (None when all are usable)."""
    errors = [d["error"] for d in report["datasets"] if "error" in d]
    return DataError("\n".join(errors)) if errors else None


def render(report: dict) -> str:
    """The report for the terminal."""
    out = [f"model {report['model']}, template {report['template']}, cutoff_len {report['cutoff_len']}"
           + (", train_on_prompt" if report["train_on_prompt"] else "") + (", mask_history" if report["mask_history"] else "")
           + (f", max_samples {report['max_samples']}" if report["max_samples"] is not None else "")]
    for d in report["datasets"]:
        where = os.path.relpath(d["file"]) if d["file"].startswith(os.getcwd() + os.sep) else d["file"]
        out.append(f"\n== {d['name']}: {where} ({d['format']}, {d['rows']} rows)")
        if "error" in d and "bad" not in d:
            out.append(f"  UNUSABLE: {d['error']}")
            continue
        out.append(f"  rows: {d['usable']} usable, {d['bad']} bad" + (" -- UNUSABLE: no usable row" if "error" in d else ""))
        for g in d["bad_reasons"]:
            out.append(f"  bad x{g['count']}: {g['reason']}")
            out += [f"    row {e['row']}: {e['message']}" for e in g["examples"]]
        roles = d.get("roles")
        if roles:
            found = ", ".join(f"{t} x{n}" for t, n in roles["found"].items())
            configured = ", ".join(f"{t}={k}" for t, k in roles["configured"].items())
            out.append(f"  role tags (`{roles['role_field']}`): found {found}; configured {configured}")
            if roles["unknown"]:
                out.append(f"  UNKNOWN role tags: {', '.join(roles['unknown'])} (set `tags` for this dataset in dataset_info.json)")
        if d.get("tools"):
            out.append(f"  tool calling: {d['tools']}")
        n = d.get("documents")
        if n:
            out.append(f"  documents: {n['count']} ({d['empty']} empty rows skipped); tokens with EOS: min {n['min']}, median "
                       f"{n['median']:g}, max {n['max']}, total {n['tokens']}: at least {n['blocks_at_least']} blocks of "
                       f"cutoff_len {report['cutoff_len']}" + (f"; {n['longer_than_cutoff']} documents longer than cutoff_len "
                                                              f"are split into pieces" if n["longer_than_cutoff"] else ""))
        b = d.get("balance")
        if b and "pairs" in b:
            out.append(f"  pairs: {b['pairs']}; chosen longer in {b['chosen_longer']}, rejected longer in {b['rejected_longer']} "
                       f"(median {b['median_chosen_tokens']:g} vs {b['median_rejected_tokens']:g} tokens)"
                       + (f"; {b['identical_replies']} with identical replies (they teach nothing)" if b["identical_replies"] else ""))
            if b["pairs"] and max(b["chosen_longer"], b["rejected_longer"]) > 0.9 * b["pairs"]:
                out.append("  note: one side is almost always the longer one; the model may learn length instead of quality")
        elif b:
            out.append(f"  labels: {b['desirable']} desirable, {b['undesirable']} undesirable"
                       + (" -- only one kind: KTO needs both" if not (b["desirable"] and b["undesirable"]) else ""))
        if "examples" in d and "lengths" not in d:
            for ex in d["examples"]:
                out.append(f"  -- row {ex['row']}:")
                out += [f"  | {line}" for line in ex["text"].splitlines()]
            continue
        if "lengths" not in d:
            continue
        n = d["lengths"]
        out.append(f"  tokens: min {n['min']}, median {n['median']:g}, max {n['max']}; {n['truncated']} of {d['usable']} "
                   f"rows truncated at cutoff_len {report['cutoff_len']}, {n['no_supervised']} left with no supervised token"
                   + (f" (rows {', '.join(map(str, n['no_supervised_rows']))}; training drops them)" if n["no_supervised"] else ""))
        for ex in d["examples"]:
            out.append(f"  -- row {ex['row']}: {ex['tokens']} tokens, {ex['supervised']} supervised {OPEN}like this{CLOSE}")
            out += [f"  | {line}" for line in ex["text"].splitlines()]
    bad = [d["name"] for d in report["datasets"] if "error" in d]
    out.append("\n" + (f"UNUSABLE: {', '.join(bad)}" if bad else "ok: every dataset has usable rows"))
    return "\n".join(out)
