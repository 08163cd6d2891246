"""The OpenAI-compatible API, driven by the official `openai` client against a live server on a tiny model."""

import concurrent.futures
import json
import socket
import threading
import time

import httpx
import pytest
import torch

from tuneforge.infer import ChatEngine, GenerationSettings

KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return ChatEngine(model, tok, "tiny", settings=GenerationSettings(temperature=0, max_new_tokens=12))


@pytest.fixture(scope="module")
def server(engine):
    import uvicorn

    from tuneforge.serve import ServerLimits, create_app

    port = free_port()
    app = create_app(engine, api_key=KEY, limits=ServerLimits(max_request_bytes=20_000, max_tokens=64))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)


def ask(q):
    return [{"role": "user", "content": q}]


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_completion_matches_the_engine_and_counts_usage(client, engine):
    out = client.chat.completions.create(model="tiny", messages=ask("Who are you?"), temperature=0, max_tokens=10)
    expected = engine.chat(ask("Who are you?"), GenerationSettings(temperature=0, max_new_tokens=10))
    assert out.choices[0].message.content == expected.text
    assert out.choices[0].message.role == "assistant"
    assert out.usage.prompt_tokens == expected.prompt_tokens
    assert out.usage.completion_tokens == expected.completion_tokens
    assert out.usage.total_tokens == expected.prompt_tokens + expected.completion_tokens
    assert out.choices[0].finish_reason in ("stop", "length")


def test_streaming_yields_chunks_that_add_up_to_the_plain_answer(client):
    plain = client.chat.completions.create(model="tiny", messages=ask("hello"), temperature=0, max_tokens=10)
    chunks = list(client.chat.completions.create(model="tiny", messages=ask("hello"), temperature=0, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_stream_ends_with_done(server):
    body = {"model": "tiny", "messages": ask("hi"), "stream": True, "max_tokens": 4}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_eight_concurrent_clients_each_get_their_own_answer(client, engine):
    questions = [f"question number {i}: {'abcdefgh'[i] * (i + 1)}" for i in range(8)]
    expected = {q: engine.chat(ask(q), GenerationSettings(temperature=0, max_new_tokens=12)).text for q in questions}
    assert len(set(expected.values())) > 1  # the answers differ, so mixing would show

    def one(i):
        q = questions[i]
        if i % 2:
            parts = client.chat.completions.create(model="tiny", messages=ask(q), temperature=0, max_tokens=12, stream=True)
            return q, "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
        return q, client.chat.completions.create(model="tiny", messages=ask(q), temperature=0, max_tokens=12).choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert {q: a for q, a in results} == expected


def test_seeded_sampling_is_reproducible(client):
    kw = dict(model="tiny", messages=ask("tell a story"), temperature=1.0, max_tokens=10, seed=7)
    assert client.chat.completions.create(**kw).choices[0].message.content == client.chat.completions.create(**kw).choices[0].message.content


def test_stop_string_cuts_the_reply(client):
    full = client.chat.completions.create(model="tiny", messages=ask("hello"), temperature=0, max_tokens=12).choices[0].message.content
    stop = full.strip()[2:5]
    assert stop
    cut = client.chat.completions.create(model="tiny", messages=ask("hello"), temperature=0, max_tokens=12, stop=[stop])
    assert stop not in cut.choices[0].message.content and full.startswith(cut.choices[0].message.content)
    assert cut.choices[0].finish_reason == "stop"


def test_wrong_key_is_401_and_server_keeps_serving(server, client):
    from openai import AuthenticationError, OpenAI

    bad = OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(AuthenticationError) as e:
        bad.chat.completions.create(model="tiny", messages=ask("hi"))
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    assert client.models.list().data


def test_unknown_model_is_404(client):
    from openai import NotFoundError

    with pytest.raises(NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=ask("hi"))
    assert "does not exist" in e.value.body["message"]


def test_malformed_json_is_400_in_openai_error_format(server, client):
    r = httpx.post(server + "/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}",
                                                                                 "Content-Type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert "not valid JSON" in err["message"] and err["type"] == "invalid_request_error"
    assert client.models.list().data


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny"}, "messages"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 5}, "temperature"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}, "max_tokens"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
])
def test_invalid_requests_are_400_naming_the_field(server, body, param):
    r = httpx.post(server + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_oversized_request_is_413_and_server_keeps_serving(client):
    from openai import APIStatusError

    with pytest.raises(APIStatusError) as e:
        client.chat.completions.create(model="tiny", messages=ask("x" * 50_000))
    assert e.value.status_code == 413
    assert client.chat.completions.create(model="tiny", messages=ask("hi"), max_tokens=2).choices


def test_api_refuses_to_listen_off_loopback_without_a_key():
    from tuneforge import TuneforgeError, config
    from tuneforge.serve.run import is_loopback, serve

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and not is_loopback("0.0.0.0")
    with pytest.raises(TuneforgeError, match="set --api-key"):
        serve(config.load(None, {}, purpose="infer"), host="0.0.0.0", api_key=None)


@pytest.mark.parametrize("flag,value,message", [
    ("--port", "abc", "--port takes a whole number 1-65535 (got abc)"),
    ("--port", "70000", "--port takes a whole number 1-65535 (got 70000)"),
    ("--max-tokens", "0", "--max-tokens takes a whole number >= 1 (got 0)"),
    ("--max-request-bytes", "1e6", "--max-request-bytes takes a whole number >= 1 (got 1e6)"),
])
def test_api_names_a_bad_flag_before_loading_the_model(tiny_model_dir, monkeypatch, flag, value, message):
    from tuneforge import TuneforgeError, cli

    monkeypatch.setattr(ChatEngine, "from_config", classmethod(lambda cls, cfg, name=None: pytest.fail("model loaded")))
    with pytest.raises(TuneforgeError) as e:
        cli.cmd_api(["--model", tiny_model_dir, flag, value])
    assert str(e.value) == message


def test_api_reports_a_model_loading_error_as_itself_not_as_a_bad_port(tiny_model_dir, monkeypatch):
    from tuneforge import cli

    def broken(cls, cfg, name=None):
        raise ValueError("Unrecognized configuration class for this kind of AutoModel")

    monkeypatch.setattr(ChatEngine, "from_config", classmethod(broken))
    with pytest.raises(ValueError, match="Unrecognized configuration class") as e:
        cli.cmd_api(["--model", tiny_model_dir, "--port", "8123"])
    assert "port" not in str(e.value)
