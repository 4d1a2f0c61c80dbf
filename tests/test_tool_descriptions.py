"""DescribeTool: a plain-language tool becomes a canonical schema, checked like an imported tool.

The teacher is a fake vendor API (the real SDKs over loopback) whose answers each test sets.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import grpc
import psycopg
import pytest
from click.testing import CliRunner
from provider_servers import Answer
from test_keys import refusal
from test_tracing_and_cli import cli_env

from distillery.cli.main import cli
from distillery.ingest.v1 import ingest_pb2
from distillery.teacher.v1 import teacher_pb2
from services.teacher.limits import Limiter
from services.teacher.providers.base import Credentials
from services.teacher.tool_descriptions import MAX_DESCRIPTION_CHARS, RESPONSE_SCHEMA, describe_tool

FLIGHTS_TEXT = (
    "Search flights between two airports on a date. The origin and destination are airport codes and are "
    "required; the date is required too. The cabin can be economy, business or first. Optionally, the most "
    "stops allowed."
)
FLIGHTS_PARAMETERS = {
    "type": "object",
    "properties": {
        "origin": {"type": "string", "description": "IATA code of the departure airport"},
        "destination": {"type": "string", "description": "IATA code of the arrival airport"},
        "date": {"type": "string", "format": "date", "description": "Day of departure"},
        "cabin": {"type": "string", "enum": ["economy", "business", "first"], "description": "Cabin class"},
        "max_stops": {"type": "integer", "minimum": 0, "description": "Most stops allowed"},
    },
    "required": ["origin", "destination", "date"],
}
FLIGHTS = {
    "name": "search_flights",
    "description": "Search flights between two airports.",
    "parameters": FLIGHTS_PARAMETERS,
}


def answering(fake, answer: Any) -> None:
    """Make the fake teacher answer ``answer`` (JSON-encoded unless it is already text)."""
    text = answer if isinstance(answer, str) else json.dumps(answer)
    fake.responder = lambda call: Answer(text=text)


def describe(client, description: str = FLIGHTS_TEXT, teacher: str = "platform:fake-model"):
    request = teacher_pb2.DescribeToolRequest(teacher=teacher, description=description)
    return client.teacher.DescribeTool(request)


def parameters_of(reply) -> dict[str, Any]:
    """The described tool's parameters (JSON text on the wire)."""
    return dict(json.loads(reply.parameters_json))


def codes(reply) -> list[tuple[str, str]]:
    return [(v.field, v.code) for v in reply.violations]


def test_a_good_answer_becomes_a_canonical_tool(services, make_tenant, client_for, providers):
    platform = providers["platform"]
    answering(platform, FLIGHTS)
    reply = describe(client_for(make_tenant()))

    assert reply.violations == []
    assert (reply.name, reply.description) == ("search_flights", "Search flights between two airports.")
    assert parameters_of(reply) == {**FLIGHTS_PARAMETERS, "additionalProperties": False}
    [call] = platform.calls
    assert call.user_text == FLIGHTS_TEXT
    assert "additionalProperties" in call.system_text and "enum" in call.system_text
    assert call.response_schema == RESPONSE_SCHEMA
    assert call.body["model"] == "fake-model" and call.body["temperature"] == 0.0


@pytest.mark.parametrize("provider,enum", [("openai", 1), ("anthropic", 2), ("google", 3)])
def test_every_vendor_answers_with_the_tenants_own_key(services, make_tenant, client_for, providers, provider, enum):
    client = client_for(make_tenant())
    key = "k-" + secrets.token_urlsafe(20)
    client.teacher.SetProviderKey(teacher_pb2.SetProviderKeyRequest(provider=enum, api_key=key, skip_check=True))
    answering(providers[provider], FLIGHTS)

    reply = describe(client, teacher=f"{provider}:fake-model")

    assert reply.violations == [] and reply.name == "search_flights"
    assert parameters_of(reply)["properties"]["cabin"]["enum"] == ["economy", "business", "first"]
    [call] = providers[provider].calls
    assert call.api_key == key and call.response_schema is not None and call.user_text == FLIGHTS_TEXT


def test_an_untyped_property_is_the_import_check_violation(services, make_tenant, client_for, providers):
    untyped = {**FLIGHTS_PARAMETERS, "properties": {**FLIGHTS_PARAMETERS["properties"], "notes": {"description": "?"}}}
    answering(providers["platform"], {**FLIGHTS, "parameters": untyped})
    reply = describe(client_for(make_tenant()))
    assert codes(reply) == [("parameters.properties.notes", "untyped_property")]
    # What the teacher wrote comes back beside the violation, to fix by hand or describe again.
    assert reply.name == "search_flights" and "notes" in parameters_of(reply)["properties"]


@pytest.mark.parametrize(
    "answer,finish,code",
    [
        ("Sure! Here is the tool you asked for: search_flights(origin, destination)", "", "unparseable_answer"),
        ('["search_flights"]', "", "unparseable_answer"),
        ('{"name": "search_flights", "description": "Search fli', "length", "answer_too_long"),
        ('{"a": ' * 5000 + "1" + "}" * 5000, "", "unparseable_answer"),  # nests beyond what json reads
        ("[" + "1, " * 200_000 + "1]", "", "answer_too_long"),  # an endpoint that ignores max_tokens
    ],
)
def test_an_answer_that_is_not_a_json_object_is_a_violation(
    services, make_tenant, client_for, providers, answer, finish, code
):
    providers["platform"].responder = lambda call: Answer(text=answer, finish_reason=finish)
    reply = describe(client_for(make_tenant()))
    assert [v.code for v in reply.violations] == [code]
    assert reply.name == "" and reply.parameters_json == ""
    assert reply.violations[0].hint


def test_a_fenced_answer_and_missing_parts_go_through_the_same_checks(services, make_tenant, client_for, providers):
    client = client_for(make_tenant())
    answering(providers["platform"], "```json\n" + json.dumps(FLIGHTS) + "\n```")
    assert describe(client).violations == []

    answering(providers["platform"], {"name": "lookup", "parameters": {"type": "string"}})
    reply = describe(client)
    assert {c for _, c in codes(reply)} == {"missing_description", "parameters_not_object"}


def test_a_refused_description_or_teacher_never_reaches_the_provider(services, make_tenant, client_for, providers):
    client = client_for(make_tenant())
    for description, words in [("  \n", "the description is empty"), ("x" * (MAX_DESCRIPTION_CHARS + 1), "over")]:
        code, message, field, _ = refusal(lambda d=description: describe(client, d))
        assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "description") and words in message
    code, _, field, _ = refusal(lambda: describe(client, teacher="gpt-4o"))
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "teacher")
    assert all(fake.calls == [] for fake in providers.values())


def test_without_a_key_the_error_says_how_to_bring_one(services, make_tenant, client_for, providers):
    code, message, field, _ = refusal(lambda: describe(client_for(make_tenant()), teacher="anthropic:fake-model"))
    assert (code, field) == (grpc.StatusCode.FAILED_PRECONDITION, "teacher")
    assert "no anthropic key: bring your own with `distillery keys set anthropic`" in message
    assert providers["anthropic"].calls == []


def test_a_busy_teacher_is_retried_then_answers(services, make_tenant, client_for, providers):
    platform = providers["platform"]
    platform.script({"status": 429, "retry_after": 0.05}, {"status": 503})
    answering(platform, FLIGHTS)
    reply = describe(client_for(make_tenant()))
    assert reply.violations == [] and [c.status for c in platform.calls] == [429, 503, 200]

    platform.script(*[{"status": 500}] * 4)  # settings.max_attempts is 4 in tests
    code, message, _, _ = refusal(lambda: describe(client_for(make_tenant())))
    assert code == grpc.StatusCode.UNAVAILABLE and "did not answer (server_error)" in message


def test_a_description_reports_and_records_its_token_usage(services, make_tenant, client_for, providers, postgres_url):
    platform = providers["platform"]
    platform.script({"status": 503})
    platform.responder = lambda call: Answer(text=json.dumps(FLIGHTS), input_tokens=321, output_tokens=54)
    tenant = make_tenant()
    reply = describe(client_for(tenant))
    assert reply.violations == []
    assert (reply.usage.requests, reply.usage.input_tokens, reply.usage.output_tokens) == (2, 321, 54)
    assert reply.usage.billed  # the deployment's platform key
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT teacher, requests, input_tokens, output_tokens, billed, ok FROM teacher.tool_descriptions"
            " WHERE tenant_id = %s",
            (tenant.tenant_id,),
        ).fetchall()
    assert rows == [("platform:fake-model", 2, 321, 54, True, True)]


def test_a_description_waits_for_the_providers_limiter(providers):
    """DescribeTool shares the provider's limiter with the generation jobs: while the jobs hold every
    place, the description waits; it goes out as soon as one frees."""
    platform = providers["platform"]
    answering(platform, FLIGHTS)
    credentials = Credentials(api_key="dpk-test", base_url=platform.base_url)

    async def main() -> Any:
        limiter = Limiter(concurrency=1)
        async with limiter.slot():  # a job's request in flight
            describing = asyncio.create_task(
                describe_tool(credentials, "platform", "fake-model", FLIGHTS_TEXT, limiter, attempts=1)
            )
            await asyncio.sleep(0.5)
            assert not describing.done() and platform.calls == []
        return await asyncio.wait_for(describing, timeout=60)

    described = asyncio.run(main())
    assert described.tool is not None and len(platform.calls) == 1


# The CLI


def test_cli_describe_prints_the_schema_and_saves_it_as_an_active_tool(services, make_tenant, client_for, providers):
    tenant = make_tenant()
    env = cli_env(services, tenant.api_key)
    runner = CliRunner()
    answering(providers["platform"], FLIGHTS)

    shown = runner.invoke(
        cli, ["tools", "describe", FLIGHTS_TEXT, "--teacher", "platform:fake-model", "--json"], env=env
    )
    assert shown.exit_code == 0, shown.output
    printed = json.loads(shown.output)
    assert printed["name"] == "search_flights" and printed["violations"] == []
    assert printed["usage"]["requests"] == 1 and printed["usage"]["output_tokens"] > 0
    assert printed["parameters"]["properties"]["max_stops"] == {
        "type": "integer",
        "minimum": 0,
        "description": "Most stops allowed",
    }
    assert client_for(tenant).ingest.ListTools(ingest_pb2.ListToolsRequest()).tools == []  # not saved without --save

    saved = runner.invoke(
        cli, ["tools", "describe", FLIGHTS_TEXT, "--teacher", "platform:fake-model", "--save"], env=env
    )
    assert saved.exit_code == 0, saved.output
    assert "Saved" in saved.output and "search_flights" in saved.output
    assert "output tokens in 1 request(s)" in saved.output  # what the description cost
    listed = runner.invoke(cli, ["tools", "list", "--json"], env=env)
    [tool] = json.loads(listed.output)
    assert tool["name"] == "search_flights" and tool["source"] == "TOOL_SOURCE_PLAIN_LANGUAGE"
    assert tool["parameters"] == {**FLIGHTS_PARAMETERS, "additionalProperties": False}


def test_cli_describe_with_violations_exits_1_and_saves_nothing(services, make_tenant, client_for, providers):
    tenant = make_tenant()
    env = cli_env(services, tenant.api_key)
    untyped = {"type": "object", "properties": {"city": {"description": "the city"}}}
    answering(providers["platform"], {**FLIGHTS, "name": "weather", "parameters": untyped})

    result = CliRunner().invoke(
        cli, ["tools", "describe", "weather for a city", "--teacher", "platform:m", "--save"], env=env
    )

    assert result.exit_code == 1
    assert "untyped_property" in result.output and "nothing saved" in result.output
    assert client_for(tenant).ingest.ListTools(ingest_pb2.ListToolsRequest()).tools == []


def test_a_deeply_nested_bad_answer_comes_back_as_violations_only(services, make_tenant, client_for, providers):
    nested: dict[str, Any] = {"description": "untyped at the bottom"}
    for _ in range(40):
        nested = {"type": "object", "properties": {"inner": nested}, "required": ["inner"]}
    answering(providers["platform"], {**FLIGHTS, "parameters": nested})
    reply = describe(client_for(make_tenant()))
    assert reply.violations and reply.parameters_json == ""
