"""The provider adapters, driven through the real vendor SDKs against fake vendor servers.

Every test runs for the three vendors and for "platform" (the openai adapter with no key).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import secrets
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from provider_servers import Answer, ProviderServer, default_responder

from services.common.errors import InvalidArgument
from services.teacher.providers import PROVIDERS, split_teacher
from services.teacher.providers.base import Completion, Credentials, ProviderError, Request

# google-genai subclasses aiohttp's ClientSession, which aiohttp frowns upon: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")

VENDORS = ["openai", "anthropic", "google", "platform"]
PROTOCOL = {"openai": "openai", "anthropic": "anthropic", "google": "google", "platform": "openai"}

SYSTEM = "You are a careful assistant."
PLAIN = Request(
    model="fake-model",
    messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the weather in Paris?"}],
)
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


class Clients:
    """One event loop for the module, and one SDK client per adapter and credentials.

    Building a client costs about 0.1 s (TLS contexts), so tests share them, as the engine would.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._clients: dict[tuple[str, Credentials], tuple[ModuleType, Any]] = {}

    def run(self, adapter: ModuleType, credentials: Credentials, action: Callable[[Any], Awaitable[Any]]) -> Any:
        key = (adapter.__name__, credentials)
        if key not in self._clients:
            self._clients[key] = (adapter, adapter.connect(credentials))
        return self.loop.run_until_complete(action(self._clients[key][1]))

    def close(self) -> None:
        for adapter, client in self._clients.values():
            self.loop.run_until_complete(adapter.close(client))
        self.loop.close()


@dataclass
class Vendor:
    name: str
    adapter: ModuleType
    server: ProviderServer
    key: str
    clients: Clients

    def run(self, action: Callable[[Any], Awaitable[Any]], *, key: str | None = None, timeout_s: float = 5.0) -> Any:
        """Runs ``action(client)`` with a client of this vendor's server."""
        credentials = Credentials(
            api_key=self.key if key is None else key, base_url=self.server.base_url, timeout_s=timeout_s
        )
        return self.clients.run(self.adapter, credentials, action)

    def complete(self, request: Request = PLAIN, **kwargs: Any) -> Completion:
        return self.run(lambda client: self.adapter.complete(client, request), **kwargs)

    def failure(self, request: Request = PLAIN, **kwargs: Any) -> ProviderError:
        with pytest.raises(ProviderError) as caught:
            self.complete(request, **kwargs)
        return caught.value


@pytest.fixture(scope="module")
def clients() -> Iterator[Clients]:
    shared = Clients()
    yield shared
    shared.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, ProviderServer]]:
    with ProviderServer("openai") as o, ProviderServer("anthropic") as a, ProviderServer("google") as g:
        yield {"openai": o, "anthropic": a, "google": g}


@pytest.fixture(params=VENDORS)
def vendor(request: pytest.FixtureRequest, servers: dict[str, ProviderServer], clients: Clients) -> Vendor:
    server = servers[PROTOCOL[request.param]]
    server.reset()
    server.latency_s, server.requests_per_minute = 0.0, 0
    key = "" if request.param == "platform" else f"test-key-{request.param}-0123456789"
    return Vendor(request.param, PROVIDERS[request.param], server, key, clients)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def words(*texts: str) -> int:
    return sum(len(t.split()) for t in texts)


def test_plain_answer_and_usage(vendor: Vendor) -> None:
    completion = vendor.complete()

    assert completion.text == "You are a ca|What is the weather in Paris?"
    assert completion.tool_calls == []
    assert completion.finish_reason == "stop"
    assert completion.input_tokens == words(SYSTEM, "What is the weather in Paris?")
    assert completion.output_tokens == words(completion.text)
    [call] = vendor.server.calls
    # The platform's servers often take no key: the SDK still needs one, so a placeholder goes.
    assert call.api_key == (vendor.key or "none")
    assert (call.system_text, call.user_text, call.status) == (SYSTEM, "What is the weather in Paris?", 200)


def test_tools_are_sent_in_the_vendor_shape_and_calls_come_back(vendor: Vendor) -> None:
    vendor.server.responder = lambda call: Answer(text="", tool_calls=[("get_weather", {"city": "Paris"})])

    completion = vendor.complete(Request(model="fake-model", messages=PLAIN.messages, tools=[WEATHER]))

    [call] = completion.tool_calls
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    assert call.id
    assert completion.finish_reason == "tool_calls"
    body = vendor.server.calls[0].body
    if vendor.name == "google":
        # The SDK sends declarations with their snake_case field names, which Google's JSON parser
        # takes as well as camelCase.
        for tool in body["tools"]:
            tool["functionDeclarations"] = [
                {camel(k): v for k, v in declaration.items()} for declaration in tool["functionDeclarations"]
            ]
    expected = {
        "openai": [{"type": "function", "function": WEATHER}],
        "anthropic": [
            {"name": "get_weather", "description": WEATHER["description"], "input_schema": WEATHER["parameters"]}
        ],
        "google": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": WEATHER["description"],
                        "parametersJsonSchema": WEATHER["parameters"],
                    }
                ]
            }
        ],
    }
    assert body["tools"] == expected[PROTOCOL[vendor.name]]


def test_a_conversation_with_a_tool_call_and_its_result_is_converted(vendor: Vendor) -> None:
    messages = [
        *PLAIN.messages,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}],
        },
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"temp_c": 21}'},
    ]

    completion = vendor.complete(Request(model="fake-model", messages=messages, tools=[WEATHER]))

    call = vendor.server.calls[0]
    # Tool results are not user text: the server still sees the question as the user's text.
    assert call.user_text == "What is the weather in Paris?"
    assert completion.text == "You are a ca|What is the weather in Paris?"
    body = call.body
    if PROTOCOL[vendor.name] == "openai":
        assert body["messages"][2:] == [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
        ]
    elif vendor.name == "anthropic":
        assert body["system"] == SYSTEM
        assert body["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "What is the weather in Paris?"}]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": '{"temp_c": 21}'}],
            },
        ]
    else:
        assert body["systemInstruction"]["parts"] == [{"text": SYSTEM}]
        signature = base64.b64encode(b"skip_thought_signature_validator").decode()
        assert body["contents"] == [
            {"role": "user", "parts": [{"text": "What is the weather in Paris?"}]},
            {
                "role": "model",
                "parts": [
                    {
                        "functionCall": {"id": "call_1", "name": "get_weather", "args": {"city": "Paris"}},
                        "thoughtSignature": signature,
                    }
                ],
            },
            {
                "role": "user",
                "parts": [{"functionResponse": {"id": "call_1", "name": "get_weather", "response": {"temp_c": 21}}}],
            },
        ]


SENTIMENT = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}, "score": {"type": "number"}},
    "required": ["label", "score"],
}


@pytest.mark.parametrize(
    ("schema", "answer"),
    [(SENTIMENT, {"label": "positive", "score": 0}), ({"type": "array", "items": {"type": "string"}}, [])],
    ids=["object", "array"],
)
def test_structured_output(vendor: Vendor, schema: dict[str, Any], answer: Any) -> None:
    completion = vendor.complete(Request(model="fake-model", messages=PLAIN.messages, response_schema=schema))

    assert json.loads(completion.text) == answer
    assert completion.tool_calls == []
    body = vendor.server.calls[0].body
    if PROTOCOL[vendor.name] == "openai":
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": False},
        }
    elif vendor.name == "anthropic":
        assert body["tool_choice"] == {"type": "tool", "name": "answer"}
        [tool] = body["tools"]
        # A tool's input is an object: any other schema travels as its one property.
        assert tool["input_schema"] == (
            schema
            if schema["type"] == "object"
            else {"type": "object", "properties": {"answer": schema}, "required": ["answer"]}
        )
    else:
        config = body["generationConfig"]
        assert (config["responseMimeType"], config["responseJsonSchema"]) == ("application/json", schema)


@pytest.mark.parametrize("status", [422, 500])
@pytest.mark.parametrize("name", ["openai", "platform"])
def test_a_server_refusing_json_schema_gets_the_older_json_mode(
    name: str, status: int, servers: dict[str, ProviderServer], clients: Clients
) -> None:
    """llama-cpp-python's server takes only {"type": "json_object", "schema": ...}: the adapter falls back, once."""
    server = servers["openai"]
    server.reset()
    vendor = Vendor(name, PROVIDERS[name], server, f"{name}-fallback-key-{status}", clients)
    # What llama-cpp-python 0.3.36 says (with a 500).
    refusal = "1 validation error: {'type': 'literal_error', 'loc': ('body', 'response_format', 'type')}"
    server.script({"status": status, "message": refusal})
    request = Request(model="fake-model", messages=PLAIN.messages, response_schema=SENTIMENT)

    assert json.loads(vendor.complete(request).text) == {"label": "positive", "score": 0}
    assert json.loads(vendor.complete(request).text) == {"label": "positive", "score": 0}

    formats = [c.body["response_format"] for c in server.calls]
    older = {"type": "json_object", "schema": SENTIMENT}
    assert [f["type"] for f in formats] == ["json_schema", "json_object", "json_object"]
    assert formats[1:] == [older, older]


def test_generation_settings_are_sent(vendor: Vendor) -> None:
    vendor.complete(
        Request(model="fake-model", messages=PLAIN.messages, temperature=0.25, max_output_tokens=77, seed=7)
    )

    body = vendor.server.calls[0].body
    if PROTOCOL[vendor.name] == "openai":
        assert (body["model"], body["max_tokens"], body["temperature"], body["seed"]) == ("fake-model", 77, 0.25, 7)
    elif vendor.name == "anthropic":
        # This SDK version knows no temperature or seed for messages.
        assert (body["model"], body["max_tokens"]) == ("fake-model", 77)
        assert "temperature" not in body and "seed" not in body
    else:
        config = body["generationConfig"]
        assert (config["maxOutputTokens"], config["temperature"], config["seed"]) == (77, 0.25, 7)
        assert vendor.server.calls[0].path == "/v1beta/models/fake-model:generateContent"


# The vendors' words for a cut-off answer, and for one withheld.
LENGTH = {"openai": "length", "anthropic": "max_tokens", "google": "MAX_TOKENS"}
REFUSAL = {"openai": "content_filter", "anthropic": "refusal", "google": "SAFETY"}


def test_finish_reasons(vendor: Vendor) -> None:
    protocol = PROTOCOL[vendor.name]
    vendor.server.script({"answer": Answer(text="cut off", finish_reason=LENGTH[protocol])})
    assert vendor.complete().finish_reason == "length"

    vendor.server.script({"answer": Answer(text="", finish_reason=REFUSAL[protocol])})
    assert vendor.failure().kind == "refused"


TOO_LONG = [
    "This model's maximum context length is 8192 tokens. However, your messages resulted in 9100 tokens.",
    "prompt is too long: 210000 tokens > 200000 maximum",
    "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
]


@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [
        ({"status": 429}, "rate_limited"),
        ({"status": 429, "spend_limit": True}, "spend_limit"),
        ({"status": 500}, "server_error"),
        ({"status": 503}, "server_error"),
        ({"status": 529}, "overloaded"),
        ({"malformed": True}, "malformed"),
        ({"disconnect": True}, "connection"),
        *[({"status": 400, "message": text}, "input_too_long") for text in TOO_LONG],
        ({"status": 400, "message": "temperature: must be at most 2"}, "invalid_request"),
        ({"status": 404, "message": "model fake-model does not exist"}, "invalid_request"),
        ({"status": 401}, "auth"),
        ({"status": 403}, "auth"),
    ],
    ids=lambda v: "-".join(f"{k}={str(x)[:12]}" for k, x in v.items()) if isinstance(v, dict) else v,
)
def test_failures_map_to_one_kind(vendor: Vendor, behaviour: dict[str, Any], kind: str) -> None:
    vendor.server.script(behaviour)

    error = vendor.failure()

    assert error.kind == kind
    assert error.status == behaviour.get("status", 0)
    if kind == "invalid_request":
        assert behaviour["message"] in error.message
    if kind == "auth":
        assert error.message.startswith(f"the {vendor.adapter.PROVIDER} key was refused ({behaviour['status']})")
    # The SDK's own retries are off: the engine alone decides what to retry.
    assert len(vendor.server.calls) == 1
    # The next request is answered normally.
    assert vendor.complete().text.endswith("|What is the weather in Paris?")


@pytest.mark.parametrize(
    ("behaviour", "low", "high"),
    [
        ({"retry_after": 0.2}, 0.2, 0.2),
        ({"retry_after_ms": 150}, 0.15, 0.15),
        # An HTTP date counts from the clock when it is read: a 60 s margin for a busy machine.
        ({"retry_after": "HTTP date 300 s from now"}, 240.0, 300.0),
    ],
    ids=["seconds", "milliseconds", "http-date"],
)
def test_retry_after_is_read(vendor: Vendor, behaviour: dict[str, Any], low: float, high: float) -> None:
    if behaviour.get("retry_after") == "HTTP date 300 s from now":
        behaviour = {"retry_after": email.utils.formatdate(time.time() + 300, usegmt=True)}
    vendor.server.script({"status": 429, **behaviour})

    error = vendor.failure()

    assert error.kind == "rate_limited"
    assert error.retry_after_s is not None
    assert low <= error.retry_after_s <= high


def test_a_slow_answer_is_a_timeout(vendor: Vendor) -> None:
    # A first answer opens the client's connection: a busy machine can take longer than the
    # short timeout to connect, and that would time out before the server saw the request.
    vendor.complete(timeout_s=0.5)
    vendor.server.script({"delay": 120.0})
    started = time.monotonic()

    error = vendor.failure(timeout_s=0.5)

    assert error.kind == "timeout"
    # The answer would come after 2 minutes: ending within 30 s is the 0.5 s timeout, on any busy machine.
    assert time.monotonic() - started < 30
    assert [c.status for c in vendor.server.calls] == [200, 0]  # the second is still being answered


def test_an_unreachable_server_is_a_connection_error(vendor: Vendor) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}" + ("/v1" if PROTOCOL[vendor.name] == "openai" else "")
    credentials = Credentials(api_key=vendor.key, base_url=base_url, timeout_s=2.0)

    with pytest.raises(ProviderError) as caught:
        vendor.clients.run(vendor.adapter, credentials, lambda client: vendor.adapter.complete(client, PLAIN))
    assert caught.value.kind == "connection"


def test_check_passes_for_a_good_key_and_refuses_a_bad_one(vendor: Vendor) -> None:
    vendor.server.valid_keys = {vendor.key or "none"}
    vendor.run(vendor.adapter.check)
    assert [c.method for c in vendor.server.calls] == ["GET"]
    assert vendor.server.calls[0].path.endswith("/models")

    with pytest.raises(ProviderError) as caught:
        vendor.run(vendor.adapter.check, key="a-revoked-key-000000")
    assert caught.value.kind == "auth"
    # Google answers a bad key with 400 INVALID_ARGUMENT / API_KEY_INVALID, the others with 401.
    assert caught.value.status == (400 if vendor.name == "google" else 401)


def test_the_key_never_shows_in_messages_reprs_or_traces(vendor: Vendor) -> None:
    key = f"sk-canary-{secrets.token_hex(16)}"
    vendor.server.valid_keys = {"another-key"}
    seen: list[str] = [repr(Credentials(api_key=key)), str(Credentials(api_key=key, base_url="http://x"))]

    def record(error: ProviderError) -> None:
        seen.extend([error.message, str(error), repr(error), "".join(traceback.format_exception(error))])

    # Refused keys: OpenAI's own 401 body echoes part of the key.
    record(vendor.failure(key=key))
    with pytest.raises(ProviderError) as caught:
        vendor.run(vendor.adapter.check, key=key)
    record(caught.value)
    vendor.server.valid_keys = None
    for behaviour in [
        {"status": 400, "message": f"unknown parameter near {key} ({key[:12]}...{key[-6:]})"},
        {"status": 429, "message": f"limit for key {key}"},
        {"status": 500, "message": key},
        {"malformed": True},
    ]:
        vendor.server.script(behaviour)
        record(vendor.failure(key=key))

    assert all(vendor.server.calls[i].api_key == key for i in range(len(vendor.server.calls)))
    for text in seen:
        for secret in (key, key[:8], key[-8:]):
            assert secret not in text


def test_the_fake_server_limits_requests_per_minute(clients: Clients) -> None:
    # One token every 10 s, at most 2 at once: the 3rd and 4th requests find none however slow the machine.
    with ProviderServer("openai", requests_per_minute=6) as server:
        server.burst = 2
        vendor = Vendor("openai", PROVIDERS["openai"], server, "k", clients)

        async def four(client: Any) -> list[Any]:
            return await asyncio.gather(
                *(vendor.adapter.complete(client, PLAIN) for _ in range(4)), return_exceptions=True
            )

        outcomes = vendor.run(four)

    refused = [o for o in outcomes if isinstance(o, ProviderError)]
    assert len(refused) == 2
    assert all(o.kind == "rate_limited" and 0 < (o.retry_after_s or 0) <= 10.0 for o in refused)
    assert sorted(c.status for c in server.calls) == [200, 200, 429, 429]


def test_the_fake_server_answers_concurrent_requests_in_parallel(clients: Clients) -> None:
    with ProviderServer("google", latency_s=0.4) as server:
        vendor = Vendor("google", PROVIDERS["google"], server, "k", clients)
        requests = [Request(model="m", messages=[{"role": "user", "content": f"q{n}"}]) for n in range(32)]
        waiting: list[int] = []  # requests in, not yet answered, each time the server answers one

        def responder(call: Any) -> Answer:
            waiting.append(sum(c.status == 0 for c in server.calls))
            return default_responder(call)

        server.responder = responder

        async def many(client: Any) -> list[Completion]:
            return await asyncio.gather(*(vendor.adapter.complete(client, r) for r in requests))

        completions = vendor.run(many)

    assert [c.text for c in completions] == [f"|q{n}" for n in range(32)]
    # Answered one after the other, each answer would find only itself waiting. (bench/bench_timing.py
    # measures how long the 32 take against one.)
    assert len(waiting) == 32 and max(waiting) > 1


def test_the_fake_server_scripts_per_user_text(servers: dict[str, ProviderServer], clients: Clients) -> None:
    server = servers["anthropic"]
    server.reset()
    vendor = Vendor("anthropic", PROVIDERS["anthropic"], server, "k", clients)
    ask = {t: Request(model="m", messages=[{"role": "user", "content": t}]) for t in ("a", "b")}
    server.script_for("b", {"status": 500}, {"answer": "scripted"})

    assert vendor.complete(ask["a"]).text == "|a"
    assert vendor.failure(ask["b"]).kind == "server_error"
    assert vendor.complete(ask["b"]).text == "scripted"
    assert vendor.complete(ask["b"]).text == "|b"
    assert [c.status for c in server.calls] == [200, 500, 200, 200]


def test_split_teacher() -> None:
    assert split_teacher("openai:some-model") == ("openai", "some-model")
    assert split_teacher("platform:org/model:q4") == ("platform", "org/model:q4")
    for bad in ("some-model", "azure:some-model", "openai:", ""):
        with pytest.raises(InvalidArgument) as caught:
            split_teacher(bad)
        assert caught.value.field == "teacher"
        assert "openai, anthropic, google, platform" in caught.value.message
