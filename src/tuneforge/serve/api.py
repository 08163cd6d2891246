"""The OpenAI-compatible routes: GET /v1/models, POST /v1/chat/completions (plain and streamed as SSE).
Errors use OpenAI's error JSON. Generation is serialized by the engine's lock; a bounded number of requests
may wait, more get 429."""

import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass

from tuneforge.infer.engine import GenerationSettings

ROLES = ("system", "user", "assistant")


@dataclass
class ServerLimits:
    max_request_bytes: int = 1_000_000
    max_tokens: int = 2048
    max_messages: int = 256
    max_waiting: int = 64


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def _error_response(e: ApiError):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=e.status, content={"error": {"message": e.message, "type": e.type, "param": e.param,
                                                                 "code": e.code}})


def _number(body, key, lo, hi, default, integer=False):
    value = body.get(key, default)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise ApiError(400, f"`{key}` must be {kind} in [{lo}, {hi}] (got {value!r})", param=key)
    return value


def parse_request(body, engine, limits: ServerLimits) -> tuple[list[dict], GenerationSettings, bool]:
    """Validate a chat completion request; raise ApiError naming the bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "`model` is required", param="model")
    if model != engine.name:
        raise ApiError(404, f"model `{model}` does not exist; this server serves `{engine.name}`", param="model",
                       code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "`messages` must be a non-empty list", param="messages")
    if len(messages) > limits.max_messages:
        raise ApiError(413, f"too many messages ({len(messages)} > {limits.max_messages})", param="messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", param=f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}]
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        clean.append({"role": m["role"], "content": content})
    if _number(body, "n", 1, 1, 1, integer=True) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop)):
        raise ApiError(400, "`stop` must be a string or a list of up to 4 non-empty strings", param="stop")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", 1, limits.max_tokens, None, integer=True)
    settings = engine.settings.with_(
        temperature=_number(body, "temperature", 0, 2, None), top_p=_number(body, "top_p", 0, 1, None),
        max_new_tokens=min(max_tokens or engine.settings.max_new_tokens, limits.max_tokens),
        seed=_number(body, "seed", -2**63, 2**63 - 1, None, integer=True), stop=stop or [],
    )
    if settings.top_p == 0:
        settings = settings.with_(temperature=0.0)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "`stream` must be true or false", param="stream")
    return clean, settings, stream


def create_app(engine, api_key: str | None = None, limits: ServerLimits | None = None):
    """A FastAPI app serving `engine` under OpenAI's routes. `api_key`, if set, is required as a Bearer token."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or ServerLimits()
    app = FastAPI(title="tuneforge API", version="1")
    waiting = threading.BoundedSemaphore(limits.max_waiting)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return _error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        return _error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error"))

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if api_key is not None:
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(token.encode(), api_key.encode()):
                return _error_response(ApiError(401, "invalid or missing API key; send `Authorization: Bearer <key>`",
                                                type_="authentication_error", code="invalid_api_key"))
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_request_bytes:
            return _error_response(ApiError(413, f"request body of {length} bytes exceeds the limit of {limits.max_request_bytes}",
                                            code="request_too_large"))
        return await call_next(request)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": created, "owned_by": "tuneforge"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        raw = await request.body()
        if len(raw) > limits.max_request_bytes:
            raise ApiError(413, f"request body exceeds the limit of {limits.max_request_bytes} bytes", code="request_too_large")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
        messages, settings, stream = parse_request(body, engine, limits)
        if not waiting.acquire(blocking=False):
            raise ApiError(429, "too many requests are waiting; retry later", type_="rate_limit_error")
        rid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not stream:
            try:
                reply = await run_in_threadpool(engine.chat, messages, settings)
            finally:
                waiting.release()
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": now, "model": engine.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": reply.finish_reason}],
                "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                          "total_tokens": reply.prompt_tokens + reply.completion_tokens},
            })
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_sse(engine, messages, settings, rid, now, include_usage, waiting), media_type="text/event-stream")

    return app


def _chunk(rid, now, model, delta, finish=None, usage=None):
    out = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        out["usage"] = usage
    return f"data: {json.dumps(out)}\n\n"


def _sse(engine, messages, settings, rid, now, include_usage, waiting):
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]` (runs in a worker thread)."""
    usage: dict = {}
    try:
        yield _chunk(rid, now, engine.name, {"role": "assistant", "content": ""})
        try:
            for piece in engine.stream(messages, settings, usage):
                yield _chunk(rid, now, engine.name, {"content": piece})
        except Exception as e:  # headers are sent: report in-band, then end the stream
            yield f"data: {json.dumps({'error': {'message': f'generation failed: {e}', 'type': 'server_error'}})}\n\n"
            yield "data: [DONE]\n\n"
            return
        yield _chunk(rid, now, engine.name, {}, finish=usage.get("finish_reason", "stop"))
        if include_usage:
            counts = {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
                      "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
            out = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": engine.name, "choices": [], "usage": counts}
            yield f"data: {json.dumps(out)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        waiting.release()
