"""Format converters: alpaca, sharegpt (from/value or role/content, custom tags) and OpenAI `messages`
rows become one shape: a list of {role, content} messages (system first, if any). Tool-calling data keeps its tools:
a `function_call` turn becomes an assistant turn with OpenAI-style `tool_calls`, an `observation` turn a `tool` turn,
and the `tools` column (function definitions) goes to the chat template as `tools`."""

import json

from tuneforge.data.errors import DataError
from tuneforge.data.registry import OPENAI_TAGS, SHAREGPT_TAGS, DatasetAttr


def detect_format(attr: DatasetAttr, columns: list[str]) -> str:
    """The format of an unregistered file, from its column names."""
    if attr.formatting != "auto":
        return attr.formatting
    if "messages" in columns:
        return "openai"
    if "conversations" in columns:
        return "sharegpt"
    if "instruction" in columns or "output" in columns:
        return "alpaca"
    raise DataError(f"dataset `{attr.name}`: cannot tell its format from columns {columns}; register it in dataset_info.json "
                    f"with `formatting` (alpaca, sharegpt or openai) and `columns`")


def check_columns(attr: DatasetAttr, columns: list[str]) -> None:
    """Fail early, naming the column, when the mapping points at a column the file lacks."""
    required = ("prompt", "response") if attr.formatting == "alpaca" else ("messages",)
    optional = ("query", "history", "system") if attr.formatting == "alpaca" else ("system", "tools")
    if attr.ranking:
        raise DataError(f"dataset `{attr.name}` is a ranking (preference) dataset; it is for stages rm or dpo, not sft")
    for key in required + optional:
        col = attr.column(key)
        if col and col not in columns and (key in required or attr.explicit(key)):
            raise DataError(f"dataset `{attr.name}` has no column `{col}` (its `{key}` column); its columns are {columns}. "
                            f"Fix `columns` for it in dataset_info.json")


def field_text(value, field: str = "") -> str:
    """A text field as written (stripped); a missing field is empty. A number, list or object where text is expected
    makes the row bad (reported), never a coerced string."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"`{field}` must be text, not {type(value).__name__} ({json.dumps(value, default=str)[:40]})")
    return value.strip()


def alpaca_to_messages(row: dict, attr: DatasetAttr) -> list[dict]:
    """instruction (+ input) -> user, output -> assistant; history pairs come first; system column on top."""
    prompt, query, response = (attr.column(k) for k in ("prompt", "query", "response"))
    user = "\n".join(t for t in (field_text(row.get(prompt), prompt), field_text(row.get(query), query) if query else "") if t)
    if not user:
        raise ValueError(f"`{prompt}`" + (f" and `{query}` are" if query and query in row else " is") + " empty")
    answer = field_text(row.get(response), response)
    if not answer:
        raise ValueError(f"`{response}` is empty")
    messages = []
    system = field_text(row.get(attr.column("system")), attr.column("system")) if attr.column("system") else ""
    if system:
        messages.append({"role": "system", "content": system})
    history = row.get(attr.column("history")) if attr.column("history") else None
    for i, turn in enumerate(history or []):
        if (not isinstance(turn, (list, tuple)) or len(turn) != 2 or not all(isinstance(t, str) and t.strip() for t in turn)):
            raise ValueError(f"`{attr.column('history')}` entry {i} must be a [question, answer] pair of non-empty strings")
        messages += [{"role": "user", "content": field_text(turn[0])}, {"role": "assistant", "content": field_text(turn[1])}]
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _tool_calls(content: str, i: int) -> list[dict]:
    """A `function_call` turn's content (`{"name": ..., "arguments": {...}}` or a list of them, as JSON) as OpenAI-style
    tool calls; anything else makes the row bad."""
    try:
        calls = json.loads(content)
    except json.JSONDecodeError as e:
        raise ValueError(f"message {i} is a function call but its content is not JSON ({e.msg} at column {e.colno})") from None
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
            raise ValueError(f'message {i} is a function call without a name; write {{"name": ..., "arguments": {{...}}}}')
        args = call.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                raise ValueError(f"message {i}: the arguments of function call `{call['name']}` are not JSON") from None
        if not isinstance(args, dict):
            raise ValueError(f"message {i}: the arguments of function call `{call['name']}` must be an object")
        out.append({"type": "function", "function": {"name": call["name"], "arguments": args}})
    return out


def row_tools(row: dict, attr: DatasetAttr) -> list[dict] | None:
    """The row's tool (function) definitions from its `tools` column (a JSON string or a list), OpenAI style
    (`{"type": "function", "function": {name, description, parameters}}`); None when the row has none.

    Raises:
        ValueError: the column is not JSON, not a list, or a tool has no name (the row is reported bad).
    """
    col = attr.column("tools")
    value = row.get(col) if col else None
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"`{col}` is not JSON ({e.msg} at column {e.colno})") from None
    value = value if isinstance(value, list) else [value]
    tools = []
    for k, tool in enumerate(value):
        spec = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise ValueError(f"`{col}` entry {k} is not a function definition with a `name`")
        tools.append({"type": "function", "function": spec})
    return tools or None


def role_tags(attr: DatasetAttr, first: dict) -> dict:
    """The entry's role/content tag names: as registered (`tags`), else OpenAI's or ShareGPT's by the first message."""
    if attr.tags_given:
        return {**SHAREGPT_TAGS, **attr.tags}
    if attr.formatting == "openai" or ("role" in first and "content" in first):
        return OPENAI_TAGS
    return SHAREGPT_TAGS


def sharegpt_to_messages(row: dict, attr: DatasetAttr) -> list[dict]:
    """A conversation list in any tag naming -> messages; turns must alternate and end with the assistant."""
    col = attr.column("messages")
    convo = row.get(col)
    if not isinstance(convo, list) or not convo:
        raise ValueError(f"`{col}` is empty or not a list of messages")
    if not all(isinstance(m, dict) for m in convo):
        raise ValueError(f"`{col}` must hold message objects")
    tags = role_tags(attr, convo[0])
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["observation_tag"]: "tool",
             tags["function_tag"]: "assistant", tags["system_tag"]: "system"}
    messages = []
    system = field_text(row.get(attr.column("system")), attr.column("system")) if attr.column("system") else ""
    for i, m in enumerate(convo):
        tag = m.get(tags["role_tag"])
        if tag not in roles:
            raise ValueError(f"message {i} has `{tags['role_tag']}` = {tag!r}; expected one of {sorted(k for k in roles if k)}")
        content = field_text(m.get(tags["content_tag"]), f"message {i} {tags['content_tag']}")
        if not content and not m.get("tool_calls"):
            raise ValueError(f"message {i} has an empty `{tags['content_tag']}`")
        role = roles[tag]
        if role == "system":
            if i != 0:
                raise ValueError(f"message {i} is a system message; only the first message may be one")
            system = system or content
            continue
        want = ("assistant",) if len(messages) % 2 else ("user", "tool")
        if role not in want:
            raise ValueError(f"message {i} is `{tag}` where a {' or '.join(want)} turn was expected; turns must alternate")
        if tag == tags["function_tag"]:
            messages.append({"role": "assistant", "content": "", "tool_calls": _tool_calls(content, i)})
        elif m.get("tool_calls") and role == "assistant":  # OpenAI style: the calls are already structured
            messages.append({"role": "assistant", "content": content,
                             "tool_calls": _tool_calls(json.dumps([c.get("function", c) for c in m["tool_calls"]]), i)})
        else:
            messages.append({"role": role, "content": content})
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("the conversation does not end with an assistant turn")
    return ([{"role": "system", "content": system}] if system else []) + messages


CONVERTERS = {"alpaca": alpaca_to_messages, "sharegpt": sharegpt_to_messages, "openai": sharegpt_to_messages}


def to_messages(ds, attr: DatasetAttr, strict: bool, log):
    """Convert every row; skip and report malformed ones (or fail on the first with `strict`).

    Returns (Dataset with one column `messages`, stats dict).

    Raises:
        DataError: naming the dataset, row and field, when `strict` is set or no row is usable.
    """
    attr.formatting = detect_format(attr, ds.column_names)
    check_columns(attr, ds.column_names)
    convert = CONVERTERS[attr.formatting]
    rows, tools, bad, first_bad = [], [], 0, None
    for i, row in enumerate(ds):
        try:
            messages, row_tool = convert(row, attr), row_tools(row, attr)
            rows.append([stored(m) for m in messages])
            tools.append(json.dumps(row_tool) if row_tool else "")
        except ValueError as e:
            bad += 1
            first_bad = first_bad or f"row {i}: {e}"
            if strict:
                raise DataError(f"dataset `{attr.name}` {first_bad} (strict: true stops at the first bad row; "
                                f"fix the row or drop strict to skip bad rows)") from None
    if not rows:
        raise DataError(f"dataset `{attr.name}`: none of its {len(ds)} rows is usable; first problem: {first_bad}")
    if bad:
        log.warning("dataset `%s`: skipped %d of %d rows with missing, empty or wrongly typed fields; first: %s", attr.name, bad,
                    len(ds), first_bad)
    from datasets import Dataset

    tool_data = any(tools) or any("tool_calls" in m for messages in rows for m in messages)
    columns = {"messages": rows, **({"tools": tools} if tool_data else {})}
    return Dataset.from_dict(columns), {"rows": len(ds), "skipped": bad, "first_skipped": first_bad}


def stored(message: dict) -> dict:
    """A message as the tokenized-data pipeline stores it: tool calls as one JSON string (their arguments differ from
    row to row, which one Arrow column type cannot hold). `templates.encode` reads either form."""
    if "tool_calls" not in message:
        return message
    return {**message, "tool_calls": json.dumps(message["tool_calls"])}
