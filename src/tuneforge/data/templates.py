"""Chat templates and loss masks. Every template is a Jinja chat template, so training ids are exactly
`tokenizer.apply_chat_template(messages)`, and the template is saved with the tokenizer."""

from tuneforge.config.errors import did_you_mean
from tuneforge.data.errors import DataError

IGNORE_INDEX = -100

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
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


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], text: str) -> list[tuple[int, int]]:
    """Character spans of each assistant reply (with its end-of-turn marker) in the rendered `text`."""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if not (text.startswith(upto) and upto.startswith(before)):
            raise DataError("the chat template renders earlier turns differently once later turns follow, so loss masks "
                            "cannot be aligned; set `template` to chatml, llama3 or alpaca")
        spans.append((len(before), len(upto)))
    return spans


def encode(tokenizer, messages: list[dict], cutoff_len: int, train_on_prompt: bool = False,
           mask_history: bool = False) -> tuple[list[int], list[int]]:
    """Token ids (equal to `apply_chat_template`) and labels (IGNORE_INDEX outside supervised spans).

    The assistant's end-of-turn marker is supervised so the model learns to stop. Truncation to
    `cutoff_len` cuts ids and labels together, so they stay aligned.
    """
    text = render(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if train_on_prompt:
        labels = list(ids)
    else:
        spans = assistant_spans(tokenizer, messages, text)
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
