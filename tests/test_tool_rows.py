"""Tool-call datasets (services/ingest/tool_rows.py): the canonical form, every rule with its field, hostile
files in bounded time and memory (tests/bounded.py), and an upload through the real ingest service and CLI."""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from bounded import run_bounded
from click.testing import CliRunner
from minio import Minio
from test_services import upload
from test_tracing_and_cli import cli_env

from distillery.cli.main import cli
from distillery.ingest.v1 import ingest_pb2
from services.common.reports import Report
from services.ingest import tool_rows, validation
from services.ingest.uploads import FileSpec, Plan, local_path

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples/tools/weather_calls.jsonl"
MIB = 1024 * 1024
CODES_OF = "services.ingest.tool_rows:codes_of"

PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "units": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "place": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}},
    },
    "required": ["city"],
}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                         "parameters": PARAMETERS}}  # fmt: skip
CANONICAL_TOOL = {"name": "get_weather", "description": "Weather for a city.", "parameters": {
    **PARAMETERS, "additionalProperties": False}}  # fmt: skip


def call(call_id: str, arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


def row(n: int = 0) -> dict[str, Any]:
    """A row that calls the tool, reads its answer and replies (row n asks about city n)."""
    return {
        "messages": [
            {"role": "system", "content": "You are a weather assistant."},
            {"role": "user", "content": f"Weather in city {n}?"},
            {"role": "assistant", "content": None, "tool_calls": [call("c1", json.dumps({"city": f"city {n}"}))]},
            {"role": "tool", "tool_call_id": "c1", "content": '{"temperature": 21}'},
            {"role": "assistant", "content": f"It is 21 degrees in city {n}."},
        ],
        "tools": [TOOL],
    }


def jsonl(*rows: Any) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def validate(data: bytes, **limits: int) -> tuple[Report, list[dict[str, Any]]]:
    out = io.BytesIO()
    report = tool_rows.validate_tool_calls(io.BytesIO(data), out, tool_rows.ToolRowLimits(**limits))
    return report, [orjson.loads(line) for line in out.getvalue().splitlines()] if report.valid else []


def violations(*rows: Any) -> list[tuple[int, str, str]]:
    return [(v.line, v.field, v.code) for v in validate(jsonl(*rows))[0].violations]


def test_a_good_row_becomes_canonical():
    good = row()
    good["messages"][1] = {"Role": "USER", "Content": [{"type": "text", "text": "Weather "}, {"type": "text",
                           "text": "in city 0?"}], "name": "ann"}  # fmt: skip
    good["messages"][2]["tool_calls"][0]["function"]["arguments"] = {"city": "city 0"}  # an object is accepted
    good["parallel_tool_calls"] = False
    report, [canonical] = validate(jsonl(good))
    assert report.valid and report.rows == 1 and report.violations == []
    assert canonical == {
        "messages": [
            {"role": "system", "content": "You are a weather assistant."},
            {"role": "user", "content": "Weather in city 0?"},
            {"role": "assistant", "content": None, "tool_calls": [call("c1", '{"city": "city 0"}')]},
            {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": '{"temperature": 21}'},
            {"role": "assistant", "content": "It is 21 degrees in city 0."},
        ],
        "tools": [CANONICAL_TOOL],
    }


def test_rows_without_a_call_and_rows_ending_with_a_call_are_valid():
    no_call = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
               "tools": [TOOL]}  # fmt: skip
    ends_with_calls = {"messages": [{"role": "user", "content": "Paris and Oslo?"}, {"role": "assistant",
                       "content": "Checking both.", "tool_calls": [call("a", '{"city": "Paris"}'),
                       call("b", '{"city": "Oslo", "units": "celsius", "place": {"lat": 59.9, "lon": 10.7}}')]}],
                       "tools": [TOOL]}  # fmt: skip
    report, canonical = validate(jsonl(no_call, ends_with_calls, *(row(k) for k in range(10))))
    assert report.valid and report.rows == 12 and report.warnings == []
    assert canonical[0] == {"messages": no_call["messages"], "tools": [CANONICAL_TOOL]}
    assert canonical[1]["messages"][1]["content"] == "Checking both."


def test_the_docs_example_and_the_example_file_are_valid():
    docs = (ROOT / "docs/datasets.md").read_text()
    block = re.search(r"### Tool calls.*?```json\n(.*?)```", docs, re.S)
    assert block is not None
    report, [canonical] = validate(jsonl(json.loads(block.group(1))))
    assert report.valid and canonical["messages"][3]["name"] == "get_weather"
    report, canonical = validate(EXAMPLE.read_bytes())
    assert report.valid and report.rows == 20 and report.warnings == []
    assert sum(not any("tool_calls" in m for m in r["messages"]) for r in canonical) == 6


def broken(change: Any) -> dict[str, Any]:
    """row() with ``change(row)`` applied."""
    r = copy.deepcopy(row())
    change(r)
    return r


def message(i: int, **fields: Any) -> Any:
    return lambda r: r["messages"][i].update(fields)


def arguments(value: Any) -> Any:
    return lambda r: r["messages"][2]["tool_calls"][0]["function"].update(arguments=value)


def tool_function(**fields: Any) -> Any:
    return lambda r: r.update(tools=[{"type": "function", "function": {**TOOL["function"], **fields}}])


ARGS = "messages[2].tool_calls[0].function.arguments"
CASES = [
    (lambda r: r.pop("tools"), "tools", "missing_field"),
    (lambda r: r.pop("messages"), "messages", "missing_field"),
    (lambda r: r.update(messages={"role": "user"}), "messages", "wrong_type"),
    (lambda r: r.update(tools=[]), "tools", "empty_field"),
    (lambda r: r.update(functions=[TOOL["function"]]), "functions", "legacy_functions"),
    (lambda r: r.update(parallel_tool_calls="yes"), "parallel_tool_calls", "wrong_type"),
    (lambda r: r.update(tools=[TOOL["function"]]), "tools[0]", "unrecognised_tool"),
    (lambda r: r.update(tools=[TOOL, TOOL]), "tools[1].function.name", "duplicate_tool"),
    (lambda r: r.update(tools=[TOOL] * 129), "tools", "too_many_tools"),
    (tool_function(description=""), "tools[0].function.description", "missing_description"),
    (tool_function(name="get weather"), "tools[0].function.name", "invalid_tool_name"),
    (tool_function(parameters={"type": "object", "properties": {"city": {}}}),
     "tools[0].function.parameters.properties.city", "untyped_property"),
    (tool_function(parameters={"type": "object", "properties": {"c": {"type": "strung"}}}),
     "tools[0].function.parameters.properties.c.type", "invalid_schema"),
    (message(1, role="robot"), "messages[1].role", "invalid_role"),
    (lambda r: r["messages"].__setitem__(1, "hi"), "messages[1]", "wrong_type"),
    (message(1, content=""), "messages[1].content", "empty_field"),
    (message(1, content={"text": "hi"}), "messages[1].content", "wrong_type"),
    (message(4, content=None), "messages[4].content", "wrong_type"),
    (message(2, tool_calls=[]), "messages[2].tool_calls", "wrong_type"),
    (lambda r: r["messages"][2]["tool_calls"][0].pop("id"), "messages[2].tool_calls[0].id", "missing_tool_call_id"),
    (lambda r: r["messages"][2]["tool_calls"][0].update(type="code"), "messages[2].tool_calls[0]", "wrong_type"),
    (lambda r: r["messages"][2]["tool_calls"][0]["function"].update(name="get_news"),
     "messages[2].tool_calls[0].function.name", "unknown_tool"),
    (lambda r: r["messages"][2]["tool_calls"][0]["function"].pop("arguments"), ARGS, "missing_field"),
    (arguments('{"city": "Paris"'), ARGS, "invalid_arguments"),
    (arguments('{"city": "Paris", "city": "Oslo"}'), ARGS, "duplicate_key"),
    (arguments('["Paris"]'), ARGS, "arguments_not_object"),
    (arguments('{"city": ' + "[" * 70 + "]" * 70 + "}"), ARGS, "nested_too_deeply"),
    (arguments('{"units": "celsius"}'), f"{ARGS}.city", "missing_required"),
    (arguments('{"city": 7}'), f"{ARGS}.city", "wrong_type"),
    (arguments('{"city": "Paris", "units": "kelvin"}'), f"{ARGS}.units", "not_in_enum"),
    (arguments('{"city": "Paris", "days": 2}'), f"{ARGS}.days", "unknown_property"),
    (arguments('{"city": "Paris", "place": {"lat": 1, "alt": 3}}'), f"{ARGS}.place.alt", "unknown_property"),
    (lambda r: r["messages"][2]["tool_calls"].append(call("c1", '{"city": "Oslo"}')),
     "messages[2].tool_calls[1].id", "duplicate_tool_call_id"),
    (lambda r: (r.update(parallel_tool_calls=False), r["messages"][2]["tool_calls"].append(call("c2", "{}"))),
     "messages[2].tool_calls", "parallel_calls_not_allowed"),
    (message(3, tool_call_id=None), "messages[3].tool_call_id", "missing_tool_call_id"),
    (message(3, tool_call_id="c9"), "messages[3].tool_call_id", "unknown_tool_call_id"),
    (lambda r: r["messages"].insert(4, dict(r["messages"][3])), "messages[4].tool_call_id",
     "tool_call_answered_twice"),
    (lambda r: r["messages"].pop(3), "messages[3]", "unanswered_tool_call"),
    (lambda r: r["messages"].pop(1), "messages", "missing_role"),
    (lambda r: r["messages"].pop(4), "messages", "no_final_answer"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "field", "code"), CASES, ids=[f"{c[2]}:{c[1]}" for c in CASES])
def test_every_rule_names_its_field_and_code(change, field, code):
    assert violations(broken(change)) == [(1, field, code)]


def test_schema_violations_other_than_the_named_ones():
    schema = {**PARAMETERS, "properties": {**PARAMETERS["properties"], "days": {"type": "integer", "maximum": 7}}}
    r = broken(tool_function(parameters=schema))
    r["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"city": "Paris", "days": 30}'
    assert violations(r) == [(1, f"{ARGS}.days", "schema_violation")]


def test_every_bad_row_is_reported_and_the_good_ones_count():
    rows = [row(k) for k in range(12)]
    rows[3] = broken(arguments('{"city": 7}'))
    rows[7] = b'{"messages": [}'
    report, canonical = validate(jsonl(*rows))
    assert (report.valid, report.rows, canonical) == (False, 12, [])
    assert [(v.line, v.code) for v in report.violations] == [(4, "wrong_type"), (8, "invalid_json")]


def test_warnings_few_rows_and_near_duplicates():
    report, _ = validate(jsonl(row(1), row(2)))
    assert report.valid and [w.code for w in report.warnings] == ["few_rows"]
    shouting = broken(message(1, content="WEATHER   in city 0 ?!"))
    report, canonical = validate(jsonl(*(row(k) for k in range(10)), shouting))
    assert report.valid and len(canonical) == 11
    assert [(w.line, w.field, w.code) for w in report.warnings] == [(11, "messages", "near_duplicate")]


def test_an_empty_file_and_a_csv_are_refused(tmp_path):
    assert [v.code for v in validate(b"\n\n")[0].violations] == ["empty_dataset"]
    data = b"messages,tools\n[],[]\n"
    local_path(tmp_path, 0).write_bytes(data)
    plan = Plan(kind=ingest_pb2.DATASET_KIND_TOOL_CALLS, files=(FileSpec("calls.csv", len(data)),),
                source_format=ingest_pb2.FILE_FORMAT_CSV)  # fmt: skip
    report = validation.check(plan, tmp_path, validation.Limits())
    assert not report.valid and [v.code for v in report.violations] == ["unsupported_format"]


def test_validation_check_writes_the_canonical_file(tmp_path):
    data = EXAMPLE.read_bytes()
    local_path(tmp_path, 0).write_bytes(data)
    plan = Plan(kind=ingest_pb2.DATASET_KIND_TOOL_CALLS, files=(FileSpec("calls.jsonl", len(data)),),
                source_format=ingest_pb2.FILE_FORMAT_JSONL)  # fmt: skip
    assert validation.check(plan, tmp_path, validation.Limits()).valid
    assert len((tmp_path / validation.CANONICAL).read_bytes().splitlines()) == 20


# -- hostile files, in a fresh interpreter under 5 s and 300 MiB -----------------------------------


def checked(tmp_path: Path, name: str, data: bytes) -> list[str]:
    path = tmp_path / name
    path.write_bytes(data)
    result = run_bounded(CODES_OF, str(path))
    assert result.within_bounds(), (result.seconds, result.extra_mib)
    return result.value


GOOD = jsonl(*(row(k) for k in range(10)))


def test_hostile_lines_get_the_text_paths_codes(tmp_path):
    cases = {
        "utf8.jsonl": (GOOD + b'{"messages": "\xc3\x28"}\n', ["invalid_encoding"]),
        "long.jsonl": (GOOD + b'{"messages": "' + b"x" * (50 * MIB) + b'"}\n' + jsonl(row(11)), ["line_too_long"]),
        "deep.jsonl": (GOOD + b'{"tools": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n", ["nested_too_deeply"]),
        "number.jsonl": (GOOD + b'{"messages": [], "tools": ' + b"9" * 100_000 + b"}\n", ["number_too_large"]),
        "dup.jsonl": (GOOD + b'{"messages": [], "messages": []}\n', ["duplicate_key"]),
        "nul.jsonl": (GOOD + b'{"messages": "a\x00b"}\n', ["nul_byte"]),
        "nul2.jsonl": (GOOD + json.dumps(broken(message(1, content="a\x00b"))).encode() + b"\n", ["nul_byte"]),
    }
    for name, (data, codes) in cases.items():
        assert checked(tmp_path, name, data) == codes, name


def test_hostile_arguments_and_tools_inside_good_lines(tmp_path):
    deep_args = broken(arguments('{"city": ' + "[" * 10_000 + "]" * 10_000 + "}"))
    huge_number = broken(arguments('{"city": ' + "9" * 100_000 + "}"))
    # nested within the line parser's limit, far past the schema checks'
    deep_schema = '{"type": "object", "properties": {"x": ' * 500 + '{"type": "string"}' + "}}" * 500
    deep_tool = json.dumps(broken(tool_function(parameters="SCHEMA"))).replace('"SCHEMA"', deep_schema).encode()
    assert checked(tmp_path, "args.jsonl", GOOD + jsonl(deep_args)) == ["nested_too_deeply"]
    assert checked(tmp_path, "num.jsonl", GOOD + jsonl(huge_number)) == ["invalid_arguments"]
    assert checked(tmp_path, "schema.jsonl", GOOD + deep_tool + b"\n") == ["nested_too_deeply"]


def test_many_rows_with_the_same_tools_and_a_million_bad_lines_stay_bounded(tmp_path):
    many = b"".join(json.dumps(row(k)).encode() + b"\n" for k in range(10_000))  # tools checked once
    assert checked(tmp_path, "many.jsonl", many) == []
    assert checked(tmp_path, "bad.jsonl", b'{"functions": []}\n' * 300_000) == ["legacy_functions"]


# -- through the ingest service and the CLI --------------------------------------------------------


def test_upload_and_cli_validate_through_the_service(services, client_for, make_tenant):
    tenant = make_tenant()
    client = client_for(tenant)
    data = EXAMPLE.read_bytes()
    reply = upload(client, data, name="weather_calls.jsonl", kind=ingest_pb2.DATASET_KIND_TOOL_CALLS)
    assert reply.report.valid and reply.report.rows == 20 and not reply.reused
    s3 = Minio(services.s3.endpoint, services.s3.access_key, services.s3.secret_key, secure=False)
    key = f"tenants/{tenant.tenant_id}/datasets/{reply.dataset.id}/canonical.jsonl"
    stored = s3.get_object(services.s3.bucket, key).read().splitlines()
    assert len(stored) == 20 and orjson.loads(stored[0])["tools"][0]["name"] == "get_weather"

    bad = data.replace(b'"units\\": \\"celsius\\"', b'"units\\": \\"kelvin\\"', 1)
    reply = upload(client, bad, name="bad.jsonl", kind=ingest_pb2.DATASET_KIND_TOOL_CALLS)
    [violation] = reply.report.violations
    assert (reply.report.valid, violation.line, violation.field, violation.code) == (
        False, 3, "messages[2].tool_calls[0].function.arguments.units", "not_in_enum")  # fmt: skip

    env = cli_env(services, tenant.api_key)
    result = CliRunner().invoke(cli, ["datasets", "validate", str(EXAMPLE), "--kind", "tool-calls", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["valid"] is True and json.loads(result.output)["rows"] == 20
    listed = CliRunner().invoke(cli, ["datasets", "list", "--kind", "tool-calls"], env=env)
    assert listed.exit_code == 0 and "tool-calls" in listed.output
