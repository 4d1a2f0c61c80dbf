"""Captured traffic through the real ingest service: CaptureTraffic as the gateway calls it (the service
token, for one tenant), ListTraffic's filters and scope, CreateDatasetFromTraffic through the upload's own
path (validation, near-duplicates, eval rows left out), and the CLI's `traffic list` and
`datasets from-traffic`."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from conftest import TenantKey
from google.protobuf import timestamp_pb2
from rpc_refusals import named_field, raised
from test_datasets_cli import canonical_rows
from test_services import upload
from test_tracing_and_cli import cli_env

from distillery.cli.main import cli
from distillery.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from services.common.auth import service_metadata
from services.common.objects import ObjectStore

PAIRS, TOOL_CALLS = ingest_pb2.DATASET_KIND_PAIRS, ingest_pb2.DATASET_KIND_TOOL_CALLS
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class Gateway:
    """IngestService as the gateway calls it: the service token, acting for one tenant."""

    def __init__(self, channel: grpc.Channel, token: str, tenant_id: str) -> None:
        self._stub = ingest_pb2_grpc.IngestServiceStub(channel)
        self._metadata = service_metadata(token, tenant_id)

    def capture(self, **record: Any) -> ingest_pb2.TrafficRecord:
        request = ingest_pb2.CaptureTrafficRequest(record=ingest_pb2.TrafficRecord(**record))
        return self._stub.CaptureTraffic(request, metadata=self._metadata, timeout=20)


@pytest.fixture
def gateway_for(services) -> Iterator[Callable[[TenantKey], Gateway]]:
    channels: list[grpc.Channel] = []

    def make(tenant: TenantKey) -> Gateway:
        channels.append(grpc.insecure_channel(services.address("ingest")))
        return Gateway(channels[-1], services.service_token, tenant.tenant_id)

    yield make
    for channel in channels:
        channel.close()


def chat(question: str, answer: str, system: str = "You answer support questions.") -> dict[str, str]:
    """A captured pairs exchange: request_json and response_json."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return {
        "request_json": json.dumps({"messages": messages}),
        "response_json": json.dumps({"role": "assistant", "content": answer}),
    }


def tool_chat(city: str) -> dict[str, str]:
    messages = [{"role": "system", "content": "Use the tools."}, {"role": "user", "content": f"Weather in {city}?"}]
    function = {"name": "get_weather", "arguments": json.dumps({"city": city})}
    call = {"id": "call_0", "type": "function", "function": function}
    return {
        "request_json": json.dumps({"messages": messages, "tools": [WEATHER]}),
        "response_json": json.dumps({"role": "assistant", "content": None, "tool_calls": [call]}),
    }


def listed(client, **fields) -> ingest_pb2.ListTrafficResponse:
    return client.ingest.ListTraffic(ingest_pb2.ListTrafficRequest(**fields))


def from_traffic(client, **fields) -> ingest_pb2.DatasetFromTraffic:
    return client.ingest.CreateDatasetFromTraffic(ingest_pb2.CreateDatasetFromTrafficRequest(**fields))


def stamp(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def test_the_gateway_captures_a_record_and_a_tenant_key_cannot(services, make_tenant, client_for, gateway_for):
    tenant = make_tenant()
    client = client_for(tenant)
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "api_key": "sk-leaked-0000"}
    stored = gateway_for(tenant).capture(
        model="openai:gpt-4.1-mini", source="proxy", metadata={"task": "support"}, request_json=json.dumps(body),
        response_json=json.dumps({"role": "assistant", "content": "hello"}), prompt_tokens=3, completion_tokens=1,
    )  # fmt: skip
    assert stored.id.startswith("trf_") and stored.HasField("created_at")
    assert json.loads(stored.request_json) == {"messages": body["messages"], "temperature": 0.5}  # no other field
    [seen] = listed(client).records
    assert (seen.id, seen.model, seen.source, dict(seen.metadata)) == (stored.id, "openai:gpt-4.1-mini", "proxy",
                                                                      {"task": "support"})  # fmt: skip
    assert (seen.prompt_tokens, seen.completion_tokens) == (3, 1) and "sk-leaked" not in seen.request_json

    record = ingest_pb2.TrafficRecord(model="mdl_x", source="endpoint", **chat("q", "a"))
    err = raised(lambda: client.ingest.CaptureTraffic(ingest_pb2.CaptureTrafficRequest(record=record)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "through the gateway" in err.details()


def test_records_over_their_bounds_or_malformed_are_refused_naming_the_field(services, make_tenant, gateway_for):
    gateway = gateway_for(make_tenant())
    base = {"model": "mdl_x", "source": "endpoint", **chat("q", "a")}
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * (3 * 1024 * 1024)}]})
    for change, field in [
        ({"request_json": huge}, "record.request_json"),
        ({"request_json": "not json"}, "record.request_json"),
        ({"request_json": json.dumps({"messages": []})}, "record.request_json"),
        ({"response_json": "[1]"}, "record.response_json"),
        ({"response_json": '{"role": "assistant", "content": "\\ud800"}'}, "record.response_json"),
        ({"source": "elsewhere"}, "record.source"),
        ({"model": ""}, "record.model"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "record.metadata"),
    ]:
        err = raised(lambda c=change: gateway.capture(**{**base, **c}))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and named_field(err) == field, (field, err.details())


def test_list_filters_by_tag_model_and_time_pages_and_is_tenant_scoped(services, make_tenant, client_for, gateway_for):
    tenant, other = make_tenant(), make_tenant()
    client = client_for(tenant)
    gateway = gateway_for(tenant)
    first = gateway.capture(model="mdl_a", source="endpoint", metadata={"task": "support", "env": "prod"},
                            **chat("one", "1"))  # fmt: skip
    time.sleep(0.05)
    middle = datetime.now(UTC)
    second = gateway.capture(model="mdl_b", source="endpoint", metadata={"task": "support"}, **chat("two", "2"))
    third = gateway.capture(model="mdl_a", source="endpoint", metadata={"task": "billing"}, **chat("three", "3"))

    def ids(**fields) -> list[str]:
        return [r.id for r in listed(client, **fields).records]

    assert ids() == [third.id, second.id, first.id]  # newest first
    assert ids(metadata={"task": "support"}) == [second.id, first.id]
    assert ids(metadata={"task": "support", "env": "prod"}) == [first.id]  # every tag must match
    assert ids(model="mdl_a") == [third.id, first.id]
    assert ids(since=stamp(middle)) == [third.id, second.id]
    assert ids(metadata={"task": "nothing"}) == []
    page = listed(client, page={"page_size": 2})
    assert [r.id for r in page.records] == [third.id, second.id] and page.page.next_page_token
    rest = listed(client, page={"page_size": 2, "page_token": page.page.next_page_token})
    assert [r.id for r in rest.records] == [first.id] and not rest.page.next_page_token
    assert listed(client_for(other)).records == []
    err = raised(lambda: listed(client_for(other), page={"page_token": page.page.next_page_token}))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # a token names one tenant's list only
    err = raised(lambda: listed(client, since=timestamp_pb2.Timestamp(seconds=2**62)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and named_field(err) == "since"


def test_a_page_of_large_records_stays_under_a_clients_message_limit(services, make_tenant, client_for, gateway_for):
    tenant = make_tenant()
    gateway = gateway_for(tenant)
    big = {"request_json": json.dumps({"messages": [{"role": "user", "content": "x" * 2_000_000}]}),
           "response_json": json.dumps({"role": "assistant", "content": "ok"})}  # fmt: skip
    for _ in range(3):
        gateway.capture(model="mdl_a", source="endpoint", metadata={"task": "big"}, **big)
    client, seen, token = client_for(tenant), 0, ""
    for _ in range(3):  # the default client takes messages of at most 4 MiB
        page = listed(client, page={"page_size": 50, "page_token": token})
        assert len(page.records) == 1 and page.ByteSize() < 4 * 1024 * 1024
        seen, token = seen + 1, page.page.next_page_token
    assert seen == 3 and token == ""


def test_from_traffic_makes_a_valid_pairs_dataset_with_the_captured_rows(
    services, make_tenant, client_for, gateway_for
):
    tenant = make_tenant()
    client = client_for(tenant)
    gateway = gateway_for(tenant)
    tag = {"task": f"support-{secrets.token_hex(3)}"}
    gateway.capture(model="mdl_a", source="endpoint", metadata=tag, **chat("Where is my order?", "It ships today."))
    gateway.capture(model="mdl_a", source="endpoint", metadata=tag, **chat("where is my ORDER?", "It ships today!"))
    gateway.capture(model="mdl_a", source="endpoint", metadata=tag, **tool_chat("Paris"))  # not a pairs row
    gateway.capture(model="mdl_a", source="endpoint", metadata={"task": "other"}, **chat("Other?", "Other."))

    made = from_traffic(client, metadata=tag, display_name="support from traffic")

    assert (made.records, made.left_out_kind, made.left_out_eval) == (3, 1, 0)
    dataset, report = made.upload.dataset, made.upload.report
    assert dataset.id.startswith("ds_") and dataset.valid and dataset.kind == PAIRS and report.valid
    assert dataset.display_name == "support from traffic" and report.rows == 2
    assert {c.code: c.count for c in report.warning_counts}.get("near_duplicate") == 1
    rows = canonical_rows(services, tenant, dataset.id)
    assert rows[0]["messages"] == [
        {"role": "system", "content": "You answer support questions."},
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": "It ships today."},
    ]
    assert client.ingest.GetDataset(ingest_pb2.GetDatasetRequest(id=dataset.id)).rows == 2  # stored as an upload
    again = from_traffic(client, metadata=tag, display_name="support from traffic")
    assert again.upload.dataset.id == dataset.id and again.upload.reused
    newest = from_traffic(client, metadata=tag, limit=2)  # the two newest records: one pairs row, one tool call
    assert (newest.records, newest.left_out_kind, newest.upload.report.rows) == (2, 1, 1)
    [row] = canonical_rows(services, tenant, newest.upload.dataset.id)
    assert row["messages"][1]["content"] == "where is my ORDER?"


def test_from_traffic_makes_a_tool_calls_dataset(services, make_tenant, client_for, gateway_for):
    tenant = make_tenant()
    client = client_for(tenant)
    gateway = gateway_for(tenant)
    for city in ("Paris", "Oslo"):
        gateway.capture(model="openai:gpt-4.1-mini", source="proxy", metadata={"task": "weather"}, **tool_chat(city))
    gateway.capture(model="openai:gpt-4.1-mini", source="proxy", metadata={"task": "weather"}, **chat("Hi", "Hello"))

    made = from_traffic(client, metadata={"task": "weather"}, kind=TOOL_CALLS)

    assert (made.records, made.left_out_kind) == (3, 1)
    assert made.upload.dataset.valid and made.upload.dataset.kind == TOOL_CALLS and made.upload.report.rows == 2
    first = canonical_rows(services, tenant, made.upload.dataset.id)[0]
    assert [t["name"] for t in first["tools"]] == ["get_weather"]
    last = first["messages"][-1]
    assert last["role"] == "assistant" and last["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(last["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}  # oldest first


def test_rows_in_an_eval_split_are_left_out(services, make_tenant, client_for, gateway_for):
    tenant = make_tenant()
    client = client_for(tenant)
    rows = [(f"question {i}", f"answer {i}") for i in range(10)]
    lines = [{"system_prompt": "You answer support questions.", "input": q, "output": a} for q, a in rows]
    dataset = upload(client, "".join(json.dumps(row) + "\n" for row in lines).encode()).dataset
    split = client.ingest.SplitDataset(ingest_pb2.SplitDatasetRequest(dataset_id=dataset.id, eval_fraction=0.2))
    held = [json.loads(line) for line in canonical_rows_at(services, split.eval_key)]
    question, answer = held[0]["messages"][1]["content"], held[0]["messages"][2]["content"]
    gateway = gateway_for(tenant)
    tag = {"task": "eval"}
    gateway.capture(model="mdl_a", source="endpoint", metadata=tag, **chat(f"  {question.upper()} ", answer))
    gateway.capture(model="mdl_a", source="endpoint", metadata=tag, **chat("a new question", "new"))

    made = from_traffic(client, metadata={"task": "eval"})

    assert (made.records, made.left_out_eval, made.left_out_kind, made.upload.report.rows) == (2, 1, 0, 1)
    [kept] = canonical_rows(services, tenant, made.upload.dataset.id)
    assert kept["messages"][1]["content"] == "a new question"


def canonical_rows_at(services, key: str) -> list[str]:
    return ObjectStore(services.s3).get_bytes(key).decode().splitlines()


def test_records_sent_without_a_system_message_take_the_given_instruction(
    services, make_tenant, client_for, gateway_for
):
    tenant = make_tenant()
    client, gateway = client_for(tenant), gateway_for(tenant)
    tag = {"task": f"triage-{secrets.token_hex(3)}"}
    bare = {
        "request_json": json.dumps({"messages": [{"role": "user", "content": "My parcel never came."}]}),
        "response_json": json.dumps({"role": "assistant", "content": '{"category": "shipping"}'}),
    }
    gateway.capture(model="mdl_a", source="endpoint", metadata=tag, **chat("Refund me.", "Done.", system="Be kind."))
    gateway.capture(model="mdl_a", source="endpoint", metadata=tag, **bare)

    without = from_traffic(client, metadata=tag)  # the bare record has no instruction: left out
    assert (without.records, without.left_out_kind, without.upload.report.rows) == (2, 1, 1)
    err = raised(lambda: from_traffic(client, metadata=tag, limit=1))  # the newest, the bare one, alone
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "--system-prompt" in err.details()

    made = from_traffic(client, metadata=tag, system_prompt="Triage the message as JSON.")
    assert (made.records, made.left_out_kind, made.upload.report.rows) == (2, 0, 2) and made.upload.report.valid
    rows = canonical_rows(services, tenant, made.upload.dataset.id)
    assert [r["messages"][0] for r in rows] == [  # oldest first
        {"role": "system", "content": "Be kind."},  # a record with its own instruction keeps it
        {"role": "system", "content": "Triage the message as JSON."},  # the bare record takes the given one
    ]


def test_from_traffic_refusals(services, make_tenant, client_for, gateway_for):
    tenant = make_tenant()
    client = client_for(tenant)
    err = raised(lambda: from_traffic(client))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and named_field(err) == "metadata"
    err = raised(lambda: from_traffic(client, metadata={"task": "none-yet"}))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "no captured traffic matches task=none-yet" in (
        err.details()
    )
    gateway_for(tenant).capture(model="mdl_a", source="endpoint", metadata={"task": "t"}, **tool_chat("Rome"))
    err = raised(lambda: from_traffic(client, metadata={"task": "t"}))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "--kind tool-calls" in err.details()
    err = raised(lambda: from_traffic(client, metadata={"task": "t"}, kind=ingest_pb2.DATASET_KIND_ASR))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and named_field(err) == "kind"
    old = stamp(datetime.now(UTC) + timedelta(hours=1))
    err = raised(lambda: from_traffic(client, metadata={"task": "t"}, kind=TOOL_CALLS, since=old))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


# The CLI


def test_the_cli_lists_traffic_and_builds_a_dataset_from_it(services, make_tenant, gateway_for):
    tenant = make_tenant()
    gateway = gateway_for(tenant)
    env = cli_env(services, tenant.api_key)
    question = "Where is my order number 1234 and when will it arrive at my door?"
    gateway.capture(model="mdl_a", source="endpoint", metadata={"task": "cli"}, **chat(question, "Tomorrow."))
    gateway.capture(model="mdl_b", source="endpoint", metadata={"task": "cli"}, **chat("Refund?", "Yes."))
    gateway.capture(model="mdl_a", source="endpoint", metadata={"task": "other"}, **chat("Other?", "No."))

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, list(args), env=env)

    listed_json = run("traffic", "list", "--tag", "task=cli", "--since", "1h", "--json")
    assert listed_json.exit_code == 0, listed_json.output
    records = json.loads(listed_json.output)
    assert [r["model"] for r in records] == ["mdl_b", "mdl_a"] and records[0]["metadata"] == {"task": "cli"}
    assert [r["model"] for r in json.loads(run("traffic", "list", "--model", "mdl_a", "--json").output)] == [
        "mdl_a", "mdl_a"
    ]  # fmt: skip
    assert json.loads(run("traffic", "list", "--limit", "1", "--json").output)[0]["metadata"] == {"task": "other"}
    assert json.loads(run("traffic", "list", "--since", "2099-01-01", "--json").output) == []
    table = run("traffic", "list", "--tag", "task=cli")
    assert table.exit_code == 0 and all(r["id"] in table.output for r in records)
    # The first eight words of the last user message (the table wraps them in its column).
    assert all(word in table.output for word in ["Where", "is", "my", "order", "number", "1234", "and", "when", "..."])
    assert "arrive" not in table.output and "endpoint" in table.output and "task=cli" in table.output
    for bad in (["--tag", "task"], ["--since", "yesterday"]):
        wrong = run("traffic", "list", *bad)
        assert wrong.exit_code == 2 and ("KEY=VALUE" in wrong.output or "time ago" in wrong.output)

    made = run("datasets", "from-traffic", "--tag", "task=cli", "--kind", "pairs", "--name", "cli set", "--json")
    assert made.exit_code == 0, made.output
    out = json.loads(made.output)
    assert out["id"].startswith("ds_") and out["valid"] and out["rows"] == 2 and out["display_name"] == "cli set"
    assert (out["records"], out["left_out_eval"], out["left_out_kind"]) == (2, 0, 0)
    assert {r["messages"][1]["content"] for r in canonical_rows(services, tenant, out["id"])} == {question, "Refund?"}
    text = run("datasets", "from-traffic", "--tag", "task=cli", "--name", "cli set")
    assert text.exit_code == 0 and f"reused {out['id']} from 2 captured records: 2 rows" in text.output
    assert "valid: 2 rows" in text.output and "few_rows" in text.output  # the upload's own report
    none = run("datasets", "from-traffic", "--tag", "task=missing")
    assert none.exit_code == 1 and "no captured traffic matches task=missing" in none.output
    assert run("datasets", "from-traffic").exit_code == 2  # --tag is required
