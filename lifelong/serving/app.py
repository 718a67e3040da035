"""The HTTP API (FastAPI): OpenAI-compatible completions, chat completions and models, plus the edit endpoints.

- ``POST /v1/completions``, ``POST /v1/chat/completions``: ``model`` (must be the served model's name),
  ``prompt`` (a string, or a list of one) / ``messages``, ``max_tokens`` (completions: 16 by default; chat: up
  to the server's limit and the context), ``temperature`` (0: greedy; OpenAI's
  default 1), ``top_p``, ``stop`` (a string or up to 4), ``n`` (only 1), ``seed``, ``stream`` (server-sent events,
  ``data: {chunk}`` lines ending with ``data: [DONE]``). Each choice also says which edit, if any, routed it
  (``edit_id``, an extension OpenAI clients ignore).
- OpenAI fields this server does not implement (``logprobs``, ``echo``, ``presence_penalty``,
  ``frequency_penalty``, ``logit_bias``, ``best_of``, ``suffix``, ``tools``, ``response_format``, ... see
  ``UNSUPPORTED``) are refused with a 400 naming the field and what is supported, unless they hold their neutral
  value (``presence_penalty: 0``, ``logprobs: null``, ``tools: []``: what some clients send by default), which is
  accepted and means what it says. A field OpenAI does not have is refused too (``unknown_parameter``), as
  OpenAI does, rather than silently ignored. ``stream_options: {"include_usage": true}`` is supported.
- ``GET /v1/models``; ``GET /healthz``.
- ``POST /v1/edits`` (one edit, a list, or ``{"edits": [...]}``: the JSON Lines edit file's fields),
  ``GET /v1/edits``, ``DELETE /v1/edits/{id}`` (rollback).

Security: the write endpoints (``POST /v1/edits``, ``DELETE /v1/edits/{id}``) need ``Authorization: Bearer
TOKEN`` when the app has a token (``--token``/``LIFELONG_TOKEN``; compared in constant time); without one they are
open, which ``server.check_security`` allows only on a loopback host with ``--insecure-no-auth``. Request bodies
over ``max_body_bytes`` are refused (413) before they are read whole. Every error is OpenAI's JSON
(``{"error": {"message", "type", "param", "code"}}``) with a 4xx status; an unexpected failure is a 500 with a
generic message and no traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
import uuid
from typing import Any, Callable, Literal, Optional, Union

from anyio import CapacityLimiter, to_thread
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lifelong.serving.engine import Engine, Generation, GenParams, RequestError, validate_edits

DEFAULT_MAX_BODY_BYTES = 1 << 20
#: a request body must arrive whole within this many seconds (a client that sends half a body and waits gets 408)
DEFAULT_BODY_TIMEOUT_S = 30.0
#: the edit endpoints' own worker threads: generations waiting for their turn hold the shared thread pool's 40
#: threads, and a write queued behind them for a thread would wait for all of them instead of only the generation
#: in progress (the session's turn lock already lets a waiting write go first)
_WRITE_THREADS = 4


def _off(*values: Any) -> Callable[[Any], bool]:
    return lambda v: any(v == x and type(v) is type(x) for x in values)


#: OpenAI request fields not implemented here: field -> (the neutral values, as said in the error, and a test of
#: neutrality). A neutral value is accepted (it asks for nothing this server does not do); any other is a 400.
UNSUPPORTED: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "logprobs": ("null or false", _off(None, False)),
    "top_logprobs": ("null or 0", _off(None, 0)),
    "echo": ("false", _off(None, False)),
    "presence_penalty": ("0", _off(None, 0, 0.0)),
    "frequency_penalty": ("0", _off(None, 0, 0.0)),
    "repetition_penalty": ("1", _off(None, 1, 1.0)),
    "logit_bias": ("null or {}", _off(None, {})),
    "best_of": ("1", _off(None, 1)),
    "suffix": ('null or ""', _off(None, "")),
    "tools": ("null or []", _off(None, [])),
    "functions": ("null or []", _off(None, [])),
    "tool_choice": ('null, "none" or "auto" (no tools)', _off(None, "none", "auto")),
    "function_call": ('null, "none" or "auto" (no functions)', _off(None, "none", "auto")),
    "parallel_tool_calls": ("null, true or false (no tools)", _off(None, True, False)),
    "response_format": ('null or {"type": "text"}', _off(None, {"type": "text"})),
    "modalities": ('null or ["text"]', _off(None, ["text"])),
    "audio": ("null", _off(None)),
    "prediction": ("null", _off(None)),
    "reasoning_effort": ("null", _off(None)),
    "verbosity": ("null", _off(None)),
    "web_search_options": ("null", _off(None)),
    "store": ("null or false", _off(None, False)),
    "metadata": ("null or {}", _off(None, {})),
    "service_tier": ('null, "auto" or "default"', _off(None, "auto", "default")),
}
#: identifiers a client may send for its own bookkeeping; they change no output, so any string is accepted
IGNORED = {"user", "safety_identifier", "prompt_cache_key"}


def _check_fields(req: BaseModel, supported: str) -> None:
    """Refuse an OpenAI field this server does not implement (unless neutral) or a field OpenAI does not have."""
    for name, value in (req.model_extra or {}).items():
        if name in IGNORED and (value is None or isinstance(value, str)):
            continue
        if name in UNSUPPORTED:
            neutral, is_neutral = UNSUPPORTED[name]
            if is_neutral(value):
                continue
            shown = json.dumps(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise RequestError(f"{name}={shown} is not supported by this server (leave it out or send {neutral}); "
                               f"supported: {supported}", param=name, code="unsupported_parameter")
        raise RequestError(f"unknown field {name!r}; supported: {supported}", param=name, code="unknown_parameter")


_SUPPORTED = "model, {}, max_tokens, temperature, top_p, stop, n (1), seed, stream, stream_options (include_usage)"


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=1.0, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=1.0, gt=0.0, le=1.0)
    n: Optional[int] = 1
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = Field(default=None, ge=-(2**63), le=2**63 - 1)  # what torch.manual_seed takes
    stream: Optional[bool] = False
    stream_options: Optional[dict[str, Any]] = None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)


def _error(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status, headers=headers)


class _TooBig(Exception):
    pass


class _BodyLimit:
    """ASGI middleware: refuse a body over ``limit`` bytes (by Content-Length, or while it streams in), and one that
    does not arrive whole within ``timeout_s`` seconds (408): the body is read here, then replayed to the app."""

    def __init__(self, app: Any, limit: int, timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_big = _error(413, f"request body larger than {self.limit} bytes", code="body_too_large")
        if length is not None:
            try:
                if int(length) > self.limit:
                    return await too_big(scope, receive, send)
            except ValueError:
                return await _error(400, "bad Content-Length header")(scope, receive, send)
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout_s)
        except asyncio.TimeoutError:
            return await _error(408, f"the request body did not arrive within {self.timeout_s:g} s",
                                code="request_timeout")(scope, receive, send)
        except _TooBig:
            return await too_big(scope, receive, send)
        if body is None:  # the client left before its body was whole
            return None
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _read(self, receive: Any) -> bytes | None:
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return None
            size += len(msg.get("body", b""))
            if size > self.limit:
                raise _TooBig
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                return b"".join(chunks)


def create_app(engine: Engine, *, token: str | None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> FastAPI:
    """The API over ``engine``; ``token`` None leaves the write endpoints open (see ``server.check_security``)."""
    app = FastAPI(title="lifelong serve", docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)
    _add_generation_routes(app, engine)
    _add_edit_routes(app, engine, token)
    app.add_middleware(_BodyLimit, limit=max_body_bytes, timeout_s=body_timeout_s)
    return app


def _unicode(text: str, param: str) -> str:
    """``text`` if it is Unicode text; a lone UTF-16 surrogate (which JSON's ``\\ud800`` escapes can carry) cannot be
    tokenized, and is a 400 naming the field rather than a 500."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(f"{param} holds a lone UTF-16 surrogate at character {exc.start + 1}; it must be valid "
                           "Unicode text", param=param) from None
    return text


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves as OpenAI's error object; anything unexpected as a generic 500 with no detail."""
    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON", code="invalid_json")
        msg = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid request")
        return _error(400, msg, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else None
        return _error(exc.status_code, str(exc.detail), code=kind)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal server error", type="server_error")

def _check_token(request: Request, token: str | None) -> None:
    if token is None:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise RequestError("a valid bearer token is needed to change the edits (Authorization: Bearer TOKEN)",
                           type="authentication_error", code="invalid_api_key", status=401)


def _params(engine: Engine, req: _Sampling, max_tokens: int | None, supported: str) -> GenParams:
    if req.model != engine.model_name:
        raise RequestError(f"the model {req.model!r} does not exist; this server serves {engine.model_name!r}",
                           param="model", code="model_not_found", status=404)
    _check_fields(req, supported)
    if (req.n or 1) != 1:
        raise RequestError(f"n={req.n} is not supported by this server (one choice per request: leave it out "
                           f"or send 1); supported: {supported}", param="n", code="unsupported_parameter")
    if req.stream_options is not None:
        if not req.stream:
            raise RequestError("stream_options is only allowed with stream: true", param="stream_options")
        unknown = sorted(set(req.stream_options) - {"include_usage"})
        if unknown or not isinstance(req.stream_options.get("include_usage", False), bool):
            raise RequestError(f"stream_options: only include_usage (true or false) is supported, got "
                               f"{json.dumps(req.stream_options)[:60]}", param="stream_options",
                               code="unsupported_parameter")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise RequestError("stop: at most 4 non-empty strings", param="stop")
    return GenParams(max_tokens=max_tokens,
                     temperature=float(1.0 if req.temperature is None else req.temperature),
                     top_p=float(1.0 if req.top_p is None else req.top_p), stop=stop, seed=req.seed)


def _usage(g: Generation) -> dict[str, int]:
    n = len(g.tokens)
    return {"prompt_tokens": g.prompt_tokens, "completion_tokens": n, "total_tokens": g.prompt_tokens + n}


def _sse(engine: Engine, ids: list[int], params: GenParams, chunk: Any, usage: bool = False) -> StreamingResponse:
    """Server-sent events; ``usage`` (``stream_options.include_usage``): every chunk has ``usage: null`` and a
    last chunk with no choices carries the usage, as OpenAI does."""
    def events() -> Any:
        try:
            for item in engine.stream(ids, params):
                final = isinstance(item, Generation)
                data = chunk(None, item) if final else chunk(item, None)
                if usage:
                    data["usage"] = None
                yield f"data: {json.dumps(data)}\n\n"
                if final and usage:
                    yield f"data: {json.dumps({**data, 'choices': [], 'usage': _usage(item)})}\n\n"
        except RequestError as exc:
            yield f"data: {json.dumps({'error': {'message': exc.message, 'type': exc.type, 'param': exc.param, 'code': exc.code}})}\n\n"
        except Exception:
            yield f"data: {json.dumps({'error': {'message': 'internal server error', 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _add_generation_routes(app: FastAPI, engine: Engine) -> None:
    """The OpenAI-compatible read side: completions, chat completions (both streamed or not) and the model list."""
    created = int(time.time())

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        params = _params(engine, req, req.max_tokens or 16, _SUPPORTED.format("prompt"))  # 16: OpenAI's default
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1 or not isinstance(prompts[0], str):
            raise RequestError("prompt: give one string (batches of prompts are not supported)", param="prompt")
        ids = engine.encode(_unicode(prompts[0], "prompt"), params)
        cid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            def chunk(delta: str | None, g: Generation | None) -> dict[str, Any]:
                choice = {"index": 0, "text": delta or "", "logprobs": None,
                          "finish_reason": g.finish_reason if g else None}
                if g is not None:
                    choice["edit_id"] = g.edit_id
                return {"id": cid, "object": "text_completion", "created": now, "model": engine.model_name,
                        "choices": [choice]}
            return _sse(engine, ids, params, chunk, bool((req.stream_options or {}).get("include_usage")))
        g = await run_in_threadpool(engine.generate, ids, params)
        return {"id": cid, "object": "text_completion", "created": now, "model": engine.model_name,
                "choices": [{"index": 0, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason,
                             "edit_id": g.edit_id}], "usage": _usage(g)}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> Any:
        # None: up to the limit (OpenAI: the model's)
        params = _params(engine, req, req.max_completion_tokens or req.max_tokens,
                         _SUPPORTED.format("messages, max_completion_tokens"))
        for n, message in enumerate(req.messages):
            _unicode(message.content, f"messages[{n}].content")
        prompt = engine.chat_prompt([m.model_dump() for m in req.messages])
        ids = engine.encode(prompt, params)
        cid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            first = [True]

            def chunk(delta: str | None, g: Generation | None) -> dict[str, Any]:
                d: dict[str, Any] = {}
                if first[0]:
                    d["role"], first[0] = "assistant", False
                if delta:
                    d["content"] = delta
                choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": g.finish_reason if g else None}
                if g is not None:
                    choice["edit_id"] = g.edit_id
                return {"id": cid, "object": "chat.completion.chunk", "created": now, "model": engine.model_name,
                        "choices": [choice]}
            return _sse(engine, ids, params, chunk, bool((req.stream_options or {}).get("include_usage")))
        g = await run_in_threadpool(engine.generate, ids, params)
        return {"id": cid, "object": "chat.completion", "created": now, "model": engine.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text},
                             "logprobs": None, "finish_reason": g.finish_reason, "edit_id": g.edit_id}],
                "usage": _usage(g)}

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [{"id": engine.model_name, "object": "model", "created": created,
                                            "owned_by": "lifelong"}]}


def _add_edit_routes(app: FastAPI, engine: Engine, token: str | None) -> None:
    """The write side (apply, rollback: bearer token when one is set), the edit list and the health check."""
    writes = CapacityLimiter(_WRITE_THREADS)  # per app: made outside the loop, anyio binds it on first use
    @app.post("/v1/edits", status_code=201)
    async def post_edits(request: Request) -> Any:
        _check_token(request, token)
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise RequestError("the request body is not valid JSON", code="invalid_json") from None
        edits = validate_edits(body, engine.max_edits_per_request)
        rows = await to_thread.run_sync(engine.apply, edits, limiter=writes)
        return {"object": "list", "data": rows}

    @app.get("/v1/edits")
    async def get_edits() -> Any:
        return {"object": "list", "data": await to_thread.run_sync(engine.list_edits, limiter=writes)}

    @app.delete("/v1/edits/{edit_id}")
    async def delete_edit(edit_id: str, request: Request) -> Any:
        _check_token(request, token)
        if not re.fullmatch(r"[0-9]{1,18}", edit_id):  # ASCII digits only: str.isdigit also takes "²"
            raise RequestError(f"edit id must be a positive integer, got {edit_id!r}", param="id")
        return await to_thread.run_sync(engine.rollback, int(edit_id), limiter=writes)

    @app.get("/healthz")
    async def healthz() -> Any:
        return engine.health()
