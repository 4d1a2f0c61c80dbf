"""TeacherService.Complete (the gateway's proxy mode): one chat request answered by an outside provider
with the tenant's own stored key, through the fake vendor APIs over loopback."""

from __future__ import annotations

import io
import json
import logging
import secrets

import grpc
import psycopg
from provider_servers import Answer
from rpc_refusals import named_field, raised

from distillery.teacher.v1 import teacher_pb2
from services.common.logs import JsonFormatter

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def with_key(client, key: str) -> None:
    client.teacher.SetProviderKey(
        teacher_pb2.SetProviderKeyRequest(provider=teacher_pb2.PROVIDER_OPENAI, api_key=key, skip_check=True)
    )


def ask(client, messages, **fields) -> teacher_pb2.CompleteResponse:
    request = teacher_pb2.CompleteRequest(model="openai:fake-model", messages_json=json.dumps(messages), **fields)
    return client.teacher.Complete(request)


def test_a_plain_answer_comes_back_with_usage_through_the_tenants_key(services, make_tenant, client_for, providers):
    tenant = make_tenant()
    client = client_for(tenant)
    key = "sk-test-" + secrets.token_urlsafe(24)
    with_key(client, key)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]

    answer = ask(client, messages, temperature=0.2, max_tokens=64)

    assert answer.content == "Be brief.|Say hello"
    assert answer.finish_reason == "stop" and not answer.tool_calls
    assert (answer.prompt_tokens, answer.completion_tokens) == (4, 3)  # the fake counts words
    [call] = providers["openai"].calls
    assert call.api_key == key and call.path == "/v1/chat/completions"
    assert call.body["model"] == "fake-model" and call.body["temperature"] == 0.2 and call.body["max_tokens"] == 64
    with psycopg.connect(services.postgres_url) as conn:
        usage = conn.execute(
            "SELECT teacher, requests, input_tokens, output_tokens, billed FROM teacher.completions"
            " WHERE tenant_id = %s",
            (tenant.tenant_id,),
        ).fetchall()
    assert usage == [("openai:fake-model", 1, 4, 3, False)]


def test_a_tool_call_comes_back_and_tool_turns_travel_in_openai_shape(services, make_tenant, client_for, providers):
    client = client_for(make_tenant())
    with_key(client, "sk-test-" + secrets.token_urlsafe(24))
    providers["openai"].script({"answer": Answer(tool_calls=[("get_weather", {"city": "Paris"})])})
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": "-3C"},
        {"role": "user", "content": "And Paris?"},
    ]  # fmt: skip

    answer = ask(client, messages, tools_json=[json.dumps(WEATHER)])

    assert answer.finish_reason == "tool_calls" and answer.content == ""
    [made] = answer.tool_calls
    assert made.name == "get_weather" and json.loads(made.arguments_json) == {"city": "Paris"} and made.id
    [call] = providers["openai"].calls
    assert call.body["tools"][0]["function"]["name"] == "get_weather"
    sent = call.body["messages"]
    assert sent[0] == {"role": "user", "content": "Weather in Paris?"}
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert sent[2] == {"role": "tool", "tool_call_id": "call_a", "content": "-3C"}


def test_bad_messages_are_refused_naming_the_field_and_the_index(services, make_tenant, client_for, providers):
    client = client_for(make_tenant())
    with_key(client, "sk-test-" + secrets.token_urlsafe(24))
    cases = [
        ("not json", "messages_json is not JSON"),
        ("[]", "non-empty JSON list"),
        (json.dumps([{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]), "messages_json[1]"),
        (json.dumps([{"role": "tool", "content": "x"}]), "messages_json[0] is a tool result without a tool_call_id"),
    ]
    for text, said in cases:
        request = teacher_pb2.CompleteRequest(model="openai:fake-model", messages_json=text)
        err = raised(lambda r=request: client.teacher.Complete(r))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and said in err.details(), err.details()
        assert named_field(err) == "messages_json"
    err = raised(lambda: ask(client, [{"role": "user", "content": "hi"}], tools_json=["{}"]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and named_field(err) == "tools_json[0]"
    err = raised(lambda: client.teacher.Complete(teacher_pb2.CompleteRequest(model="gpt-4", messages_json="[]")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and named_field(err) == "model"
    assert providers["openai"].calls == []


def test_without_a_stored_key_it_says_how_to_bring_one(services, make_tenant, client_for, providers):
    client = client_for(make_tenant())
    err = raised(lambda: ask(client, [{"role": "user", "content": "hi"}]))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "`distillery keys set openai`" in err.details()
    assert providers["openai"].calls == []


def test_provider_errors_are_mapped(services, make_tenant, client_for, providers):
    client = client_for(make_tenant())
    with_key(client, "sk-test-" + secrets.token_urlsafe(24))
    hi = [{"role": "user", "content": "hi"}]

    providers["openai"].script({"status": 400, "message": "Unsupported parameter: 'foo'."})
    err = raised(lambda: ask(client, hi))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "Unsupported parameter" in err.details()

    providers["openai"].script({"status": 429, "retry_after": 0.01}, {"status": 500})  # retried like a job row
    assert ask(client, hi).content == "|hi"

    providers["openai"].script(*[{"status": 503}] * 4)  # the test teacher tries 4 times
    err = raised(lambda: ask(client, hi))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "after 4 tries" in err.details()


def test_the_key_appears_nowhere_in_logs_errors_or_answers(services, make_tenant, client_for, providers, caplog):
    canary = f"sk-canary-{secrets.token_hex(16)}"
    fragments = [canary, canary[:12], canary[-8:], canary[10:26]]
    client = client_for(make_tenant())
    with_key(client, canary)
    caplog.set_level(logging.DEBUG)
    formatted = io.StringIO()
    handler = logging.StreamHandler(formatted)
    handler.setFormatter(JsonFormatter("teacher"))
    logging.getLogger().addHandler(handler)
    seen: list[str] = []
    hi = [{"role": "user", "content": f"hi {canary[:3]}"}]
    try:
        seen.append(str(ask(client, hi)))
        # The provider refuses the key, echoing part of it; then quotes all of it in a server error.
        providers["openai"].valid_keys = {"sk-another-key-0000"}
        err = raised(lambda: ask(client, hi))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "your openai key was refused" in err.details()
        seen += [err.details(), repr(err.trailing_metadata())]
        providers["openai"].valid_keys = None
        providers["openai"].script(*[{"status": 500, "message": f"internal error for key {canary}"}] * 4)
        err = raised(lambda: ask(client, hi))
        assert err.code() == grpc.StatusCode.UNAVAILABLE and "[key]" in err.details()
        seen += [err.details(), repr(err.trailing_metadata())]
        providers["openai"].script({"status": 400, "message": f"bad request with {canary}"})
        err = raised(lambda: ask(client, hi))
        seen += [err.details(), repr(err.trailing_metadata())]
    finally:
        logging.getLogger().removeHandler(handler)
    assert sum(c.api_key == canary for c in providers["openai"].calls) >= 6  # the key did travel to the vendor
    for record in caplog.records:
        text = repr(record.__dict__) + record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        seen.append(text)
    seen.append(formatted.getvalue())
    assert "TeacherService/Complete" in formatted.getvalue()
    with psycopg.connect(services.postgres_url) as conn:
        seen += [repr(row) for row in conn.execute("SELECT * FROM teacher.completions").fetchall()]
    for text in seen:
        for fragment in fragments:
            assert fragment not in text
