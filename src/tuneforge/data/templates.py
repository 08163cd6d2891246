"""Chat templates and loss masks. Every template is a Jinja chat template, so training ids are exactly
`tokenizer.apply_chat_template(messages)`, and the template is saved with the tokenizer."""

import json

from tuneforge.config.errors import did_you_mean
from tuneforge.data.errors import DataError

IGNORE_INDEX = -100

# Tool calling (only when the conversation has tools or tool calls; otherwise the templates render as before): the
# function definitions go in a system turn (after the conversation's own system text), one JSON object a line inside
# <tools></tools>; an assistant's calls follow its text as <tool_call>{"name": ..., "arguments": {...}}</tool_call>;
# tool results are `tool` turns.
_TOOLS_INTRO = ("You can call these functions. Their definitions, one JSON object a line:\n<tools>\n"
                "{% for tool in tools %}{{ (tool.function if tool.function is defined else tool) | tojson }}\n{% endfor %}"
                '</tools>\nTo call one, answer with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.')
_CALLS = ("{% if message.tool_calls %}{% for call in message.tool_calls %}"
          "{% if message['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
          "{{ '<tool_call>' }}{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}{{ '</tool_call>' }}"
          "{% endfor %}{% endif %}")


def _with_tools(start: str, end: str) -> str:
    """A template in the start/end-of-turn markers `start` (with a `ROLE` placeholder) and `end`."""
    open_ = lambda role: start.replace("ROLE", role)  # noqa: E731
    return (
        "{% if tools %}{{ '" + open_("system") + "' }}"
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
        + _TOOLS_INTRO + "{{ '" + end + "' }}{% endif %}"
        "{% for message in messages %}{% if not (tools and loop.first and message['role'] == 'system') %}"
        "{{ '" + open_("' + message['role'] + '") + "' + message['content'] }}" + _CALLS + "{{ '" + end + "' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '" + open_("assistant") + "' }}{% endif %}"
    )


CHATML = _with_tools("<|im_start|>ROLE\\n", "<|im_end|>\\n")
LLAMA3 = "{{ bos_token }}" + _with_tools("<|start_header_id|>ROLE<|end_header_id|>\\n\\n", "<|eot_id|>")
ALPACA = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + '\\n\\n' }}"
    "{% else %}{{ '### Input:\\n' + message['content'] + '\\n\\n### Response:\\n' }}{% endif %}{% endfor %}"
)
NAMED = {"chatml": CHATML, "llama3": LLAMA3, "alpaca": ALPACA}
# LLaMA-Factory template names for models that ship their own chat template: use the tokenizer's.
TOKENIZER_OWN = {"auto", "default", "empty", "smollm", "smollm2", "qwen", "qwen2", "qwen2_5", "qwen3", "llama2", "mistral",
                 "gemma", "gemma2", "phi", "phi3", "deepseek", "deepseek3", "glm4", "yi", "baichuan2", "intern2", "olmo"}


def known_templates() -> set[str]:
    """Every name `template` accepts."""
    return set(NAMED) | TOKENIZER_OWN


def apply_template(tokenizer, name: str, log=None) -> str:
    """Set the tokenizer's chat template from `template` and return which one is used.

    Raises:
        DataError: naming `template` when it is unknown, or `auto` and the tokenizer has none.
    """
    if name in NAMED:
        tokenizer.chat_template = NAMED[name]
        return name
    if name in TOKENIZER_OWN:
        if not tokenizer.chat_template:
            raise DataError(f"template `{name}`: this tokenizer has no chat template of its own; set `template` to one of "
                            f"{', '.join(NAMED)}")
        if name not in ("auto", "default") and log is not None:
            log.info("template `%s`: using the tokenizer's own chat template", name)
        return "tokenizer"
    raise DataError(f"template `{name}` is unknown{did_you_mean(name, list(NAMED) + sorted(TOKENIZER_OWN))}; "
                    f"use auto (the tokenizer's own) or one of {', '.join(NAMED)}")


def template_messages(messages: list[dict]) -> list[dict]:
    """Messages as the chat template reads them: tool calls stored as a JSON string (data/formats.stored) parsed back,
    keys Arrow filled with None for messages that lack them dropped."""
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if v is not None}
        if isinstance(m.get("tool_calls"), str):
            m["tool_calls"] = json.loads(m["tool_calls"])
        out.append(m)
    return out


def template_tools(tools) -> list[dict] | None:
    """A row's tools as stored (a JSON string, "" for none) or as a list; None when there are none."""
    if isinstance(tools, str):
        return json.loads(tools) if tools else None
    return tools or None


PROBE_TOOL = {"type": "function", "function": {"name": "tuneforge_probe_tool", "description": "", "parameters": {}}}
_RENDERS_TOOLS: dict[str, bool] = {}


def renders_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders both tool definitions and an assistant's tool calls."""
    template = str(tokenizer.chat_template)
    if template not in _RENDERS_TOOLS:
        probe = [{"role": "user", "content": "q"},
                 {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                     "name": "tuneforge_probe_call", "arguments": {}}}]}]
        try:
            text = tokenizer.apply_chat_template(probe, tools=[PROBE_TOOL], tokenize=False)
        except Exception:  # a template that raises on tools or tool calls does not render them
            text = ""
        _RENDERS_TOOLS[template] = "tuneforge_probe_tool" in text and "tuneforge_probe_call" in text
    return _RENDERS_TOOLS[template]


TOOLS_TEXT_FORMAT = ("the tool definitions in a system turn (after its own text) as a <tools> block, one JSON object a "
                     "line; each call after the assistant's text as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>; "
                     "each tool result as a user turn <tool_response>...</tool_response>")


def tools_as_text(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """The conversation in plain {role, content} turns for a chat template that does not render tools
    (TOOLS_TEXT_FORMAT; the same text chatml and llama3 render natively, except that results are user turns)."""
    out = [dict(m) for m in messages]
    if tools:
        lines = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
        intro = ("You can call these functions. Their definitions, one JSON object a line:\n<tools>\n" + lines + "\n</tools>\n"
                 'To call one, answer with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.')
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + intro}
        else:
            out.insert(0, {"role": "system", "content": intro})
    for i, m in enumerate(out):
        calls = m.pop("tool_calls", None)
        if calls:
            text = "\n".join("<tool_call>" + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                                                        ensure_ascii=False) + "</tool_call>" for c in calls)
            m["content"] = (m["content"] + "\n" + text) if m.get("content") else text
        if m["role"] == "tool":
            out[i] = {"role": "user", "content": "<tool_response>\n" + m["content"] + "\n</tool_response>"}
    return out


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False, tools=None) -> str:
    """The chat template applied to `messages` (and `tools`); tool calling in TOOLS_TEXT_FORMAT when the template does
    not render tools itself."""
    messages, tools = template_messages(messages), template_tools(tools)
    if (tools or any(m.get("tool_calls") for m in messages)) and not renders_tools(tokenizer):
        messages, tools = tools_as_text(messages, tools), None
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], text: str, tools=None) -> list[tuple[int, int]]:
    """Character spans of each assistant reply (with its end-of-turn marker) in the rendered `text`."""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        upto = render(tokenizer, messages[: i + 1], tools=tools)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise DataError("the chat template renders earlier turns differently once later turns follow, so loss masks "
                            "cannot be aligned; set `template` to chatml, llama3 or alpaca")
        spans.append((len(before), len(upto)))
    return spans


def encode(tokenizer, messages: list[dict], cutoff_len: int, train_on_prompt: bool = False,
           mask_history: bool = False, tools=None) -> tuple[list[int], list[int]]:
    """Token ids (equal to `apply_chat_template(messages, tools=tools)`) and labels (IGNORE_INDEX outside supervised
    spans). An assistant's tool calls are supervised like its text; tool results are not.

    The assistant's end-of-turn marker is supervised so the model learns to stop. Truncation to
    `cutoff_len` cuts ids and labels together, so they stay aligned.
    """
    text = render(tokenizer, messages, tools=tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if train_on_prompt:
        labels = list(ids)
    else:
        spans = assistant_spans(tokenizer, messages, text, tools)
        if mask_history:
            spans = spans[-1:]
        labels = [IGNORE_INDEX] * len(ids)
        k = 0
        for t, (start, end) in enumerate(enc["offset_mapping"]):
            while k < len(spans) and start >= spans[k][1]:
                k += 1
            if k < len(spans) and spans[k][0] <= start < spans[k][1] and end > start:
                labels[t] = ids[t]
    return ids[:cutoff_len], labels[:cutoff_len]
