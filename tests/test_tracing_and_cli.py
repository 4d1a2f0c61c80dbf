"""One trace across CLI -> service -> service; CLI exit codes; logs without secrets."""

from __future__ import annotations

import itertools
import json
import logging
import time

from click.testing import CliRunner
from conftest import SPANS
from opentelemetry.trace import SpanKind

from distillery.cli.main import cli


def cli_env(services, api_key: str | None) -> dict[str, str]:
    env = {f"DISTILLERY_{name.upper()}_ADDRESS": address for name, address in services.addresses.items()}
    env["DISTILLERY_HOME"] = "/nonexistent-distillery-home"
    if api_key:
        env["DISTILLERY_API_KEY"] = api_key
    return env


def wait_for_spans(names: set[str], timeout: float = 5.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spans = SPANS.get_finished_spans()
        if names <= {s.name for s in spans}:
            return list(spans)
        time.sleep(0.05)
    raise AssertionError(f"spans {names - {s.name for s in SPANS.get_finished_spans()}} never finished")


def test_one_trace_spans_the_cli_a_service_and_the_service_it_calls(services, make_tenant):
    tenant = make_tenant()  # a fresh key: ingest must ask the registry about it
    SPANS.clear()
    result = CliRunner().invoke(cli, ["datasets", "list", "--json"], env=cli_env(services, tenant.api_key))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == []

    list_call = "/distillery.ingest.v1.IngestService/ListDatasets"
    auth_call = "/distillery.registry.v1.RegistryService/AuthenticateKey"
    spans = wait_for_spans({list_call, auth_call})
    by_kind = {(s.name, s.kind): s for s in spans if s.name in (list_call, auth_call)}
    cli_span = by_kind[(list_call, SpanKind.CLIENT)]
    ingest_span = by_kind[(list_call, SpanKind.SERVER)]
    ingest_to_registry = by_kind[(auth_call, SpanKind.CLIENT)]
    registry_span = by_kind[(auth_call, SpanKind.SERVER)]

    chain = [cli_span, ingest_span, ingest_to_registry, registry_span]
    assert len({s.context.trace_id for s in chain}) == 1
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id


def test_cli_exit_codes_and_messages(services, make_tenant):
    runner = CliRunner()
    tenant = make_tenant()

    no_key = runner.invoke(cli, ["runs", "list"], env=cli_env(services, None))
    assert no_key.exit_code == 1
    assert "unauthenticated" in no_key.output and "Traceback" not in no_key.output

    missing = runner.invoke(cli, ["datasets", "show", "ds_nope"], env=cli_env(services, tenant.api_key))
    assert missing.exit_code == 1 and "not_found" in missing.output

    usage = runner.invoke(cli, ["datasets", "upload"], env=cli_env(services, tenant.api_key))
    assert usage.exit_code == 2

    down = cli_env(services, tenant.api_key)
    down["DISTILLERY_TRAINER_ADDRESS"] = "127.0.0.1:1"  # nothing listens there
    unavailable = runner.invoke(cli, ["runs", "list"], env=down)
    assert unavailable.exit_code == 3 and "unavailable" in unavailable.output

    quota = runner.invoke(cli, ["quota", "--json"], env=cli_env(services, tenant.api_key))
    assert quota.exit_code == 0 and json.loads(quota.output)["allowance"] == 3


def test_upload_through_the_cli(services, make_tenant, tmp_path):
    tenant = make_tenant()
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"system_prompt": "s", "input": "i", "output": "o"}\n')
    env = cli_env(services, tenant.api_key)
    first = CliRunner().invoke(cli, ["datasets", "upload", str(data), "--kind", "pairs", "--json"], env=env)
    assert first.exit_code == 0, first.output
    uploaded = json.loads(first.output)
    assert uploaded["reused"] is False and uploaded["id"].startswith("ds_")
    second = CliRunner().invoke(cli, ["datasets", "upload", str(data), "--kind", "pairs", "--json"], env=env)
    assert json.loads(second.output)["reused"] is True
    listed = json.loads(CliRunner().invoke(cli, ["datasets", "list", "--json"], env=env).output)
    assert [d["id"] for d in listed] == [uploaded["id"]]


def test_logs_never_show_keys(services, make_tenant, caplog):
    from services.common.logs import JsonFormatter

    tenant = make_tenant()
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "got key %s and admin %s", (tenant.api_key, services.admin_token), None
    )
    line = JsonFormatter("test").format(record)
    assert tenant.api_key not in line and services.admin_token not in line
    assert "dk_[REDACTED]" in line and json.loads(line)["service"] == "test"
