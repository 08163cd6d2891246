"""Tool-calling data keeps its tools: the `tools` column reaches the chat template, a `function_call` turn is an
assistant tool call (supervised), an `observation` turn a tool result (not supervised); a template that does not
render tools gets them in a documented text format (said in the log)."""

import json
import os

import pytest

from conftest import make_tokenizer, write_json
from tuneforge import config, data
from tuneforge.data import registry
from tuneforge.data.formats import to_messages
from tuneforge.data.loaders import load_rows
from tuneforge.data.templates import IGNORE_INDEX, NAMED, encode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = {"name": "get_weather", "description": "Weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
ROW = {"conversations": [
    {"from": "human", "value": "Weather in Oslo?"},
    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})},
    {"from": "observation", "value": json.dumps({"temperature_c": 6})},
    {"from": "gpt", "value": "It is 6 degrees in Oslo."}], "tools": json.dumps([TOOL])}


def tool_dir(tmp_path, rows):
    d = tmp_path / "data"
    write_json(str(d / "tools.json"), rows)
    write_json(str(d / "dataset_info.json"), {"tools": {"file_name": "tools.json", "formatting": "sharegpt",
                                                        "columns": {"messages": "conversations", "tools": "tools"}}})
    return str(d)


def convert(tmp_path, rows):
    attr = registry.resolve(["tools"], tool_dir(tmp_path, rows))[0]
    return to_messages(load_rows(attr), attr, False, __import__("logging").getLogger("t"))


def test_function_calls_and_observations_become_tool_calls_and_tool_turns_and_the_tools_are_kept(tmp_path):
    ds, stats = convert(tmp_path, [ROW])
    assert stats["skipped"] == 0 and ds.column_names == ["messages", "tools"]
    messages = [{k: v for k, v in m.items() if v is not None} for m in ds[0]["messages"]]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert json.loads(messages[1]["tool_calls"]) == [{"type": "function", "function": {"name": "get_weather",
                                                                                      "arguments": {"city": "Oslo"}}}]
    assert json.loads(ds[0]["tools"]) == [{"type": "function", "function": TOOL}]


def test_the_tools_and_the_call_reach_the_tokens_and_only_the_assistant_turns_are_supervised(tmp_path):
    tok = make_tokenizer()
    ds, _ = convert(tmp_path, [ROW])
    ids, labels = encode(tok, ds[0]["messages"], 4096, tools=ds[0]["tools"])
    text = tok.decode(ids)
    assert "<tools>" in text and '"name": "get_weather"' in text and '"required": ["city"]' in text
    supervised = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>' in supervised
    assert "It is 6 degrees in Oslo." in supervised
    assert "temperature_c" not in supervised and "Weather in Oslo?" not in supervised and "<tools>" not in supervised
    # the same ids as the chat template renders the structured conversation
    messages = [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                    "name": "get_weather", "arguments": {"city": "Oslo"}}}]},
                {"role": "tool", "content": json.dumps({"temperature_c": 6})},
                {"role": "assistant", "content": "It is 6 degrees in Oslo."}]
    assert ids == tok.apply_chat_template(messages, tools=[{"type": "function", "function": TOOL}], tokenize=True,
                                          return_dict=False)


def test_conversations_without_tools_render_exactly_as_before():
    tok = make_tokenizer()
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    expected = {"chatml": "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n",
                "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\ns<|eot_id|><|start_header_id|>user"
                          "<|end_header_id|>\n\nq<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\na<|eot_id|>"}
    for name, text in expected.items():
        tok.chat_template = NAMED[name]
        assert tok.apply_chat_template(messages, tokenize=False) == text


@pytest.mark.parametrize("bad, reason", [
    ({"from": "function_call", "value": "get_weather(Oslo)"}, "not JSON"),
    ({"from": "function_call", "value": json.dumps({"arguments": {}})}, "without a name"),
    ({"from": "function_call", "value": json.dumps({"name": "f", "arguments": [1]})}, "must be an object"),
])
def test_a_malformed_function_call_is_a_reported_bad_row(tmp_path, bad, reason):
    row = {**ROW, "conversations": [ROW["conversations"][0], bad, *ROW["conversations"][2:]]}
    _, stats = convert(tmp_path, [ROW, row])
    assert stats["skipped"] == 1 and reason in stats["first_skipped"] and stats["first_skipped"].startswith("row 1")


def test_malformed_tools_are_a_reported_bad_row(tmp_path):
    _, stats = convert(tmp_path, [ROW, {**ROW, "tools": "[{not json"}, {**ROW, "tools": json.dumps([{"description": "x"}])}])
    assert stats["skipped"] == 2 and "`tools` is not JSON" in stats["first_skipped"]


def test_a_template_that_does_not_render_tools_gets_them_as_documented_text(tmp_path, caplog):
    import logging

    tok = make_tokenizer()
    tok.chat_template = NAMED["alpaca"]  # renders neither tools nor tool calls
    cfg = config.load(None, {"output_dir": str(tmp_path / "o"), "dataset": "tools", "dataset_dir": tool_dir(tmp_path, [ROW] * 3),
                             "template": "alpaca"})
    with caplog.at_level(logging.INFO, logger="tuneforge.data.pipeline"):
        parts, _ = data.build(cfg.data, tok, str(tmp_path / "cache"))
    assert "tool calling is written as text" in caplog.text
    row = parts["train"][0]
    text = tok.decode(row["input_ids"])
    assert "<tools>" in text and '"name": "get_weather"' in text and "<tool_response>" in text
    supervised = tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != IGNORE_INDEX])
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>' in supervised
    assert "temperature_c" not in supervised and "<tools>" not in supervised


def test_the_shipped_tool_calling_demo_trains_with_its_tools(tiny_model_dir, tmp_path):
    from tuneforge import run

    cfg = config.load(None, {"model_name_or_path": tiny_model_dir, "dataset": "tool_calls_demo", "dataset_dir": os.path.join(ROOT, "data"),
                             "template": "chatml", "output_dir": str(tmp_path / "run"), "max_steps": 1, "cutoff_len": 1024,
                             "cache_dir": str(tmp_path / "cache")})
    prepared = run.build(cfg)
    row = prepared.trainer.train_dataset[0]
    text = make_tokenizer().decode(row["input_ids"])
    assert "<tools>" in text and "get_weather" in text and "<tool_call>" in text
    assert prepared.stats["datasets"]["tool_calls_demo"]["skipped"] == 0


def test_openai_style_messages_with_tool_calls_and_tools_are_kept(tmp_path):
    d = tmp_path / "data"
    row = {"messages": [{"role": "user", "content": "Weather in Oslo?"},
                        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                            "name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}}]},
                        {"role": "tool", "tool_call_id": "c1", "content": "6 C"},
                        {"role": "assistant", "content": "It is 6 degrees."}],
           "tools": [{"type": "function", "function": TOOL}]}
    write_json(str(d / "oa.json"), [row])
    attr = registry.resolve(["oa.json"], str(d))[0]
    ds, stats = to_messages(load_rows(attr), attr, False, __import__("logging").getLogger("t"))
    assert stats["skipped"] == 0, stats
    ids, labels = encode(make_tokenizer(), ds[0]["messages"], 4096, tools=ds[0]["tools"])
    tok = make_tokenizer()
    assert '"required": ["city"]' in tok.decode(ids)
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>' in tok.decode(
        [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])
