"""Fake vendor APIs at the HTTP wire, for tests: the real SDKs talk to them over loopback.

``ProviderServer(protocol)`` speaks one vendor's protocol (non-streaming):

    openai     POST /v1/chat/completions, GET /v1/models        base_url http://127.0.0.1:PORT/v1
    anthropic  POST /v1/messages, GET /v1/models                base_url http://127.0.0.1:PORT
    google     POST /v1beta/models/{model}:generateContent,     base_url http://127.0.0.1:PORT
               GET /v1beta/models (also under /v1, the SDK's default version)

It runs aiohttp on its own event loop in a daemon thread, so synchronous tests and tests with
their own loop can both use it. Every request is recorded as a ``Call`` whose texts are
normalised across vendors. What it answers:

- by default (``default_responder``) the text ``f"{system_text[:12]}|{user_text}"``; when the
  request asks for structured output, a small JSON value that follows the schema (strings hold
  that same text). Usage counts words: input = words of every text in the request, output =
  words of the answer's text plus its tool calls' JSON arguments.
- ``responder`` (settable) turns a Call into an ``Answer`` (text, tool calls, usage).
- ``script(*behaviours)``: the next requests get these behaviours, in order;
  ``script_for(user_text, *behaviours)``: the same, only for requests with that user text
  (checked first). Behaviour keys, combinable:
      {"status": 429, "retry_after": 0.2}   the vendor's error body for that status; retry_after
                                            (seconds, or a string sent verbatim, e.g. an HTTP date)
                                            and "retry_after_ms" set those headers (google: seconds
                                            go in the body's RetryInfo, as Google does)
      {"status": 429, "spend_limit": True}  the vendor's out-of-credit body
      {"status": 400, "message": "..."}     the vendor's error body with that message ("code" too)
      {"status": 529} / 500 / 503 / 401     (anthropic 529: overloaded_error)
      {"delay": 5.0}                        sleep first (to make the client time out)
      {"malformed": True}                   200 with a truncated JSON body
      {"disconnect": True}                  close the connection without an answer
      {"answer": Answer(...) or "text"}     answer this instead of asking the responder
- ``valid_keys``: None accepts any key; otherwise another key gets the vendor's bad-key answer
  (openai/anthropic: 401; google: 400 INVALID_ARGUMENT with reason API_KEY_INVALID, as Google does).
- ``requests_per_minute`` > 0: a token bucket refilled at rpm/60 per second, holding at most
  ``burst`` tokens (default: one second's worth, at least 1); a request finding it empty gets
  the vendor's 429 with ``retry-after`` = seconds until the next token (fractional).
- ``latency_s``: every answer waits this long first (asyncio: concurrent requests overlap).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiohttp import web


@dataclass
class Call:
    path: str
    # The key the client sent ("" when none).
    api_key: str
    # The parsed JSON body, or None (GET, or not JSON).
    body: Any
    # Text of the last user message that has text (tool results are not user text).
    user_text: str = ""
    # System prompt(s), joined with newlines.
    system_text: str = ""
    # The JSON Schema the request asks the answer to follow, whatever the vendor's way.
    response_schema: dict[str, Any] | None = None
    # Words in every text of the request: the default input usage.
    input_words: int = 0
    method: str = "POST"
    # What was answered; 0 while the answer is pending, 499 for a dropped connection.
    status: int = 0


@dataclass
class Answer:
    text: str = ""
    # (tool name, arguments).
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # None: counted in words (see the module docstring).
    input_tokens: int | None = None
    output_tokens: int | None = None
    # The vendor's own word ("length", "max_tokens", "MAX_TOKENS"...); "" picks the usual one.
    finish_reason: str = ""


def default_responder(call: Call) -> Answer:
    text = f"{call.system_text[:12]}|{call.user_text}"
    if call.response_schema is not None:
        return Answer(text=json.dumps(example_of(call.response_schema, text)))
    return Answer(text=text)


def example_of(schema: dict[str, Any], text: str) -> Any:
    """A small value following ``schema`` (strings are ``text``)."""
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if schema.get(combinator):
            return example_of(schema[combinator][0], text)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: example_of(properties.get(name, {}), text) for name in schema.get("required", properties)}
    simple = {"string": text, "integer": 0, "number": 0, "boolean": True, "array": [], "null": None}
    return simple.get(kind, text)


class ProviderServer:
    def __init__(self, protocol: str, *, latency_s: float = 0.0, requests_per_minute: int = 0) -> None:
        if protocol not in _PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(_PROTOCOLS)}")
        self.protocol = protocol
        self.latency_s = latency_s
        self.requests_per_minute = requests_per_minute
        self.burst: int | None = None
        self.valid_keys: set[str] | None = None
        self.responder: Callable[[Call], Answer] = default_responder
        self.calls: list[Call] = []
        self.base_url = ""
        self._lock = threading.Lock()
        self._script: deque[dict[str, Any]] = deque()
        self._scripts_for: dict[str, deque[dict[str, Any]]] = {}
        self._tokens = 0.0
        self._refilled_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None

    # -- control, from the test's thread --------------------------------------------------

    def script(self, *behaviours: dict[str, Any]) -> None:
        with self._lock:
            self._script.extend(behaviours)

    def script_for(self, user_text: str, *behaviours: dict[str, Any]) -> None:
        with self._lock:
            self._scripts_for.setdefault(user_text, deque()).extend(behaviours)

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self._script.clear()
            self._scripts_for.clear()
            self.valid_keys = None
            self.responder = default_responder
            self._refilled_at = 0.0

    def start(self) -> ProviderServer:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                runner = loop.run_until_complete(self._serve())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-{self.protocol}", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError(f"the fake {self.protocol} server did not start within 10 s")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        loop, stopping = self._loop, self._stopping
        if stopping is not None:
            loop.call_soon_threadsafe(stopping.set)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> ProviderServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving, on the server's loop -----------------------------------------------------

    async def _serve(self) -> web.AppRunner:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}" + ("/v1" if self.protocol == "openai" else "")
        return runner

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        wire = _PROTOCOLS[self.protocol]
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        call = Call(path=request.path, api_key=wire.key_of(request), body=body, method=request.method)
        if isinstance(body, dict):
            wire.describe(call, body)
        with self._lock:
            self.calls.append(call)
        response = await self._answer(wire, request, call)
        call.status = response.status
        return response

    async def _answer(self, wire: _Wire, request: web.Request, call: Call) -> web.StreamResponse:
        if self.valid_keys is not None and call.api_key not in self.valid_keys:
            return wire.bad_key(call.api_key)
        wait = self._take_token()
        if wait > 0:
            return wire.error(429, {"retry_after": round(wait, 3)})
        behaviour = self._next_behaviour(call.user_text)
        await self._sleep(self.latency_s + float(behaviour.get("delay", 0.0)))
        if behaviour.get("disconnect") and request.transport is not None:
            request.transport.close()
            return web.Response(status=499)
        if behaviour.get("status"):
            return wire.error(int(behaviour["status"]), behaviour)
        if behaviour.get("malformed"):
            return web.Response(
                status=200, text='{"id": "x", "choices": [{"message": {"content": "', content_type="application/json"
            )
        route = wire.route(request.method, request.path)
        if route is None:
            return wire.error(404, {"message": f"no route for {request.method} {request.path}"})
        if route == "models":
            return web.json_response(wire.models)
        answer = behaviour.get("answer") or self.responder(call)
        if isinstance(answer, str):
            answer = Answer(text=answer)
        return web.json_response(wire.completion(call, answer, _usage(call, answer)))

    def _next_behaviour(self, user_text: str) -> dict[str, Any]:
        with self._lock:
            for queue in (self._scripts_for.get(user_text), self._script):
                if queue:
                    return queue.popleft()
        return {}

    def _take_token(self) -> float:
        """0 when the request may go on, else the seconds until the bucket holds a token."""
        if self.requests_per_minute <= 0:
            return 0.0
        rate = self.requests_per_minute / 60.0
        capacity = float(self.burst or max(1, self.requests_per_minute // 60))
        now = time.monotonic()
        with self._lock:
            if self._refilled_at == 0.0:
                self._tokens, self._refilled_at = capacity, now
            self._tokens = min(capacity, self._tokens + (now - self._refilled_at) * rate)
            self._refilled_at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / rate

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self._stopping is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)


def _usage(call: Call, answer: Answer) -> tuple[int, int]:
    output = len(answer.text.split()) + sum(len(json.dumps(args).split()) for _, args in answer.tool_calls)
    return (
        call.input_words if answer.input_tokens is None else answer.input_tokens,
        output if answer.output_tokens is None else answer.output_tokens,
    )


def _words(*texts: str) -> int:
    return sum(len(t.split()) for t in texts)


def _retry_headers(behaviour: dict[str, Any]) -> dict[str, str]:
    headers = {}
    if behaviour.get("retry_after") is not None:
        headers["retry-after"] = str(behaviour["retry_after"])
    if behaviour.get("retry_after_ms") is not None:
        headers["retry-after-ms"] = str(behaviour["retry_after_ms"])
    return headers


# -- the three wire protocols ------------------------------------------------------------------


class _Wire:
    models: ClassVar[dict[str, Any]]

    def key_of(self, request: web.Request) -> str:
        raise NotImplementedError

    def describe(self, call: Call, body: dict[str, Any]) -> None:
        """Fills the call's normalised texts and schema from the request body."""
        raise NotImplementedError

    def route(self, method: str, path: str) -> str | None:
        raise NotImplementedError

    def completion(self, call: Call, answer: Answer, usage: tuple[int, int]) -> dict[str, Any]:
        raise NotImplementedError

    def error(self, status: int, behaviour: dict[str, Any]) -> web.Response:
        raise NotImplementedError

    def bad_key(self, key: str) -> web.Response:
        return self.error(401, {})


def _texts(content: Any) -> list[str]:
    """The texts of an OpenAI/Anthropic message content: a string or a list of text blocks."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
    return []


class _OpenAI(_Wire):
    models: ClassVar[dict[str, Any]] = {
        "object": "list",
        "data": [{"id": "fake-model", "object": "model", "created": 1700000000, "owned_by": "tests"}],
    }
    _types: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        403: "invalid_request_error",
        404: "invalid_request_error",
        429: "requests",
    }
    _codes: ClassVar[dict[int, str]] = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}

    def key_of(self, request: web.Request) -> str:
        return request.headers.get("Authorization", "").removeprefix("Bearer ")

    def route(self, method: str, path: str) -> str | None:
        return {("POST", "/v1/chat/completions"): "chat", ("GET", "/v1/models"): "models"}.get((method, path))

    def describe(self, call: Call, body: dict[str, Any]) -> None:
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        system = [t for m in messages if m.get("role") in ("system", "developer") for t in _texts(m.get("content"))]
        users = [" ".join(_texts(m.get("content"))) for m in messages if m.get("role") == "user"]
        call.system_text = "\n".join(system)
        call.user_text = next((u for u in reversed(users) if u), "")
        every = [t for m in messages for t in _texts(m.get("content"))]
        every += [c["function"]["arguments"] for m in messages for c in m.get("tool_calls") or []]
        call.input_words = _words(*every)
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            call.response_schema = response_format.get("json_schema", {}).get("schema")
        elif response_format.get("type") == "json_object":  # the older JSON mode, schema optional
            call.response_schema = response_format.get("schema") or {}

    def completion(self, call: Call, answer: Answer, usage: tuple[int, int]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": answer.text or None, "refusal": None}
        if answer.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
                for n, (name, args) in enumerate(answer.tool_calls)
            ]
        finish = answer.finish_reason or ("tool_calls" if answer.tool_calls else "stop")
        return {
            "id": f"chatcmpl-{len(call.path)}{int(time.time() * 1000)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": (call.body or {}).get("model", ""),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
        }

    def error(self, status: int, behaviour: dict[str, Any]) -> web.Response:
        if behaviour.get("spend_limit"):
            error = {
                "message": "You exceeded your current quota, please check your plan and billing details.",
                "type": "insufficient_quota",
                "code": "insufficient_quota",
            }
        else:
            error = {
                "message": behaviour.get("message") or _DEFAULT_MESSAGES.get(status, "The server had an error."),
                "type": self._types.get(status, "server_error"),
                "code": behaviour.get("code") or self._codes.get(status),
            }
        return web.json_response({"error": {**error, "param": None}}, status=status, headers=_retry_headers(behaviour))

    def bad_key(self, key: str) -> web.Response:
        # OpenAI echoes part of the key it refuses.
        shown = f"{key[:8]}{'*' * 20}{key[-4:]}" if len(key) > 12 else key
        return self.error(
            401,
            {
                "message": f"Incorrect API key provided: {shown}. You can find your API key at https://platform.example/account/api-keys."
            },
        )


class _Anthropic(_Wire):
    models: ClassVar[dict[str, Any]] = {
        "data": [{"type": "model", "id": "fake-model", "display_name": "Fake", "created_at": "2025-01-01T00:00:00Z"}],
        "has_more": False,
        "first_id": "fake-model",
        "last_id": "fake-model",
    }
    _types: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        529: "overloaded_error",
    }

    def key_of(self, request: web.Request) -> str:
        return request.headers.get("x-api-key") or request.headers.get("Authorization", "").removeprefix("Bearer ")

    def route(self, method: str, path: str) -> str | None:
        return {("POST", "/v1/messages"): "chat", ("GET", "/v1/models"): "models"}.get((method, path))

    def describe(self, call: Call, body: dict[str, Any]) -> None:
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        call.system_text = "\n".join(_texts(body.get("system")))
        users = [" ".join(_texts(m.get("content"))) for m in messages if m.get("role") == "user"]
        call.user_text = next((u for u in reversed(users) if u), "")
        every = [call.system_text] + [t for m in messages for t in _texts(m.get("content"))]
        for m in messages:
            for block in m.get("content") if isinstance(m.get("content"), list) else []:
                if block.get("type") == "tool_use":
                    every.append(json.dumps(block.get("input")))
                elif block.get("type") == "tool_result":
                    every += _texts(block.get("content"))
        call.input_words = _words(*every)
        forced = _forced_tool(body)
        if forced is not None:
            call.response_schema = forced.get("input_schema")

    def completion(self, call: Call, answer: Answer, usage: tuple[int, int]) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        forced = _forced_tool(call.body or {})
        if forced is not None:
            try:
                value = json.loads(answer.text)
            except ValueError:
                value = {"text": answer.text}
            content.append({"type": "tool_use", "id": "toolu_answer", "name": forced["name"], "input": value})
        elif answer.text:
            content.append({"type": "text", "text": answer.text})
        for n, (name, args) in enumerate(answer.tool_calls):
            content.append({"type": "tool_use", "id": f"toolu_{n}", "name": name, "input": args})
        used_tools = forced is not None or answer.tool_calls
        return {
            "id": f"msg_{int(time.time() * 1000)}",
            "type": "message",
            "role": "assistant",
            "model": (call.body or {}).get("model", ""),
            "content": content,
            "stop_reason": answer.finish_reason or ("tool_use" if used_tools else "end_turn"),
            "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
        }

    def error(self, status: int, behaviour: dict[str, Any]) -> web.Response:
        if behaviour.get("spend_limit"):
            error: dict[str, Any] = {
                "type": "billing_error",
                "message": "You have reached your specified workspace API usage limits.",
                "details": {"error_code": "enforced_spend_limit_reached"},
            }
        else:
            message = behaviour.get("message") or _DEFAULT_MESSAGES.get(status, "Internal server error")
            error = {"type": self._types.get(status, "api_error"), "message": message}
        body = {"type": "error", "error": error, "request_id": "req_fake"}
        return web.json_response(body, status=status, headers=_retry_headers(behaviour))


def _forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    choice = body.get("tool_choice") or {}
    if choice.get("type") != "tool":
        return None
    return next((t for t in body.get("tools", []) if t.get("name") == choice.get("name")), None)


class _Google(_Wire):
    models: ClassVar[dict[str, Any]] = {
        "models": [
            {"name": "models/fake-model", "displayName": "Fake", "supportedGenerationMethods": ["generateContent"]}
        ]
    }
    _statuses: ClassVar[dict[int, str]] = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }

    def key_of(self, request: web.Request) -> str:
        return request.headers.get("x-goog-api-key") or request.query.get("key", "")

    def route(self, method: str, path: str) -> str | None:
        # The adapter pins v1beta; the SDK's own default is v1.
        path = path.replace("/v1beta/", "/v1/", 1)
        if method == "POST" and path.startswith("/v1/models/") and path.endswith(":generateContent"):
            return "chat"
        return "models" if (method, path) == ("GET", "/v1/models") else None

    def describe(self, call: Call, body: dict[str, Any]) -> None:
        def texts(content: Any) -> list[str]:
            return [p["text"] for p in (content or {}).get("parts", []) if isinstance(p, dict) and "text" in p]

        contents = [c for c in body.get("contents", []) if isinstance(c, dict)]
        call.system_text = "\n".join(texts(body.get("systemInstruction")))
        users = [" ".join(texts(c)) for c in contents if c.get("role", "user") == "user"]
        call.user_text = next((u for u in reversed(users) if u), "")
        every = [call.system_text] + [t for c in contents for t in texts(c)]
        for c in contents:
            for part in c.get("parts", []):
                for key in ("functionCall", "functionResponse"):
                    if key in part:
                        every.append(json.dumps(part[key].get("args", part[key].get("response"))))
        call.input_words = _words(*every)
        config = body.get("generationConfig") or {}
        if config.get("responseMimeType") == "application/json":
            call.response_schema = config.get("responseJsonSchema") or config.get("responseSchema") or {}

    def completion(self, call: Call, answer: Answer, usage: tuple[int, int]) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": answer.text}] if answer.text else []
        for n, (name, args) in enumerate(answer.tool_calls):
            part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
            if n == 0:
                # What Gemini 3 attaches to a turn's first call, to be sent back with it.
                part["thoughtSignature"] = base64.b64encode(b"fake-signature").decode()
            parts.append(part)
        return {
            "candidates": [
                {
                    "content": {"role": "model", "parts": parts},
                    "finishReason": answer.finish_reason or "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": usage[0],
                "candidatesTokenCount": usage[1],
                "totalTokenCount": sum(usage),
            },
            "modelVersion": call.path.rsplit("/", 1)[-1].split(":")[0],
            "responseId": f"fake-{int(time.time() * 1000)}",
        }

    def error(self, status: int, behaviour: dict[str, Any]) -> web.Response:
        error: dict[str, Any] = {"code": status, "status": self._statuses.get(status, "UNAVAILABLE")}
        if behaviour.get("spend_limit"):
            error["message"] = (
                "Your prepayment credits are depleted. Please go to AI Studio to manage your project and billing."
            )
        else:
            error["message"] = behaviour.get("message") or _DEFAULT_MESSAGES.get(status, "Internal error encountered.")
        headers = _retry_headers(behaviour)
        if isinstance(behaviour.get("retry_after"), (int, float)):
            # Google says how long to wait in the body (RetryInfo), not in a header.
            del headers["retry-after"]
            retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{behaviour['retry_after']}s"}
            error["details"] = [retry]
        if behaviour.get("reason"):
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": behaviour["reason"],
                    "domain": "googleapis.com",
                }
            ]
        return web.json_response({"error": error}, status=status, headers=headers)

    def bad_key(self, key: str) -> web.Response:
        # Google answers a bad key with 400, not 401.
        return self.error(
            400, {"message": "API key not valid. Please pass a valid API key.", "reason": "API_KEY_INVALID"}
        )


_DEFAULT_MESSAGES = {
    400: "Invalid request.",
    401: "Invalid authentication credentials.",
    403: "Permission denied.",
    404: "Not found.",
    429: "Rate limit reached: too many requests per minute, please try again later.",
    500: "The server had an error while processing your request.",
    503: "The service is currently unavailable.",
    529: "Overloaded",
}

_PROTOCOLS: dict[str, _Wire] = {"openai": _OpenAI(), "anthropic": _Anthropic(), "google": _Google()}
