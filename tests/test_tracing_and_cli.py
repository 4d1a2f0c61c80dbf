"""One trace across CLI -> service -> service; CLI exit codes; service logs without secrets."""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from conftest import SPANS
from opentelemetry.trace import SpanKind

from distillery.cli.main import cli
from distillery.registry.v1 import registry_pb2, registry_pb2_grpc
from distillery.stack.servers import free_port
from distillery.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from distillery.tokens import new_admin_token, new_api_key

ROOT = Path(__file__).resolve().parent.parent


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


def test_the_log_formatter_redacts_every_key_shape():
    from services.common.logs import JsonFormatter

    secrets_ = [f"{prefix}{secrets.token_urlsafe(30)}" for prefix in ("dk_", "dat_", "dst_", "drt_", "sk-", "AIza")]
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "got %s", (" and ".join(secrets_),), None)
    line = JsonFormatter("test").format(record)
    assert not [s for s in secrets_ if s in line or s[-12:] in line], line
    assert "dk_[REDACTED]" in line and json.loads(line)["service"] == "test"


def spawn_service(name: str, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m services.<name>`` as `distillery up` starts it: its output appended to ``log``."""
    address = f"127.0.0.1:{free_port()}"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], cwd=ROOT, stdout=out, stderr=out,
            env={**os.environ, **env, "DISTILLERY_GRPC_ADDRESS": address},
        )  # fmt: skip
    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=60)
    except grpc.FutureTimeoutError:
        proc.kill()
        raise AssertionError(f"{name} did not start:\n{log.read_text(errors='replace')[-4000:]}") from None
    finally:
        channel.close()
    return proc, address


def test_logs_never_show_keys(services, providers, tmp_path):
    """A registry and a teacher run as their own processes, logging at DEBUG to files as in the local stack;
    real calls carry the admin token, an API key, the service token and a tenant's provider key (set, checked,
    used, refused, quoted back by the vendor); no key, nor any part of one, is in either log."""
    admin_token = new_admin_token()
    provider_key = f"k-canary-{secrets.token_hex(16)}"  # no shape the log redaction knows: it must never be logged
    s3 = services.s3
    common = {
        "DISTILLERY_DATABASE_URL": services.postgres_url, "DISTILLERY_S3_ENDPOINT": s3.endpoint,
        "DISTILLERY_S3_ACCESS_KEY": s3.access_key, "DISTILLERY_S3_SECRET_KEY": s3.secret_key,
        "DISTILLERY_S3_BUCKET": s3.bucket, "DISTILLERY_SERVICE_TOKEN": services.service_token,
        "DISTILLERY_LOG_LEVEL": "DEBUG",
    }  # fmt: skip
    logs = {name: tmp_path / f"{name}.log" for name in ("registry", "teacher")}
    running: list[subprocess.Popen[bytes]] = []
    try:
        registry, registry_address = spawn_service(
            "registry", {**common, "DISTILLERY_ADMIN_TOKEN": admin_token,
                         "DISTILLERY_MODEL_CACHE_DIR": str(tmp_path / "models")}, logs["registry"],
        )  # fmt: skip
        running.append(registry)
        teacher, teacher_address = spawn_service(
            "teacher", {**common, "DISTILLERY_REGISTRY_ADDRESS": registry_address,
                        "DISTILLERY_INGEST_ADDRESS": services.address("ingest"),
                        "DISTILLERY_MASTER_KEY": services.master_key,
                        "DISTILLERY_OPENAI_BASE_URL": providers["openai"].base_url,
                        "DISTILLERY_TEACHER_TIMEOUT_S": "5", "DISTILLERY_TEACHER_MAX_ATTEMPTS": "2",
                        "DISTILLERY_TEACHER_MAX_BACKOFF_S": "0.1"}, logs["teacher"],
        )  # fmt: skip
        running.append(teacher)
        api_key = exercise_keys(registry_address, teacher_address, admin_token, provider_key, providers["openai"])
    finally:
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    texts = {name: log.read_text(errors="replace") for name, log in logs.items()}
    # The logs are the services' real JSON lines, and they saw the calls.
    assert '"rpc /distillery.registry.v1.RegistryService/CreateTenant' in texts["registry"], texts["registry"][-3000:]
    assert "RegistryService/AuthenticateKey" in texts["registry"]
    assert "TeacherService/SetProviderKey" in texts["teacher"] and "TeacherService/DescribeTool" in texts["teacher"]
    assert '"level": "DEBUG"' in texts["registry"] + texts["teacher"]
    keys = {"admin token": admin_token, "API key": api_key, "provider key": provider_key,
            "service token": services.service_token, "master key": services.master_key}  # fmt: skip
    for what, key in keys.items():
        body = key.split("_", 1)[1] if key.startswith(("dk_", "dat_", "dst_")) else key  # "dk_[REDACTED]" is fine
        for fragment in {key, body[:12], body[-12:], body[len(body) // 2 - 6 : len(body) // 2 + 6]}:
            for name, text in texts.items():
                assert fragment not in text, f"the {what} ({fragment!r}) is in the {name} log"


def exercise_keys(registry_address: str, teacher_address: str, admin_token: str, provider_key: str, openai) -> str:
    """Calls that carry every kind of key, good and bad; returns the API key made."""
    admin = [("authorization", f"Bearer {admin_token}")]
    with grpc.insecure_channel(registry_address) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        tenant = registry.CreateTenant(registry_pb2.CreateTenantRequest(name=f"t-{secrets.token_hex(5)}"),
                                       metadata=admin, timeout=20)  # fmt: skip
        api_key = registry.CreateApiKey(
            registry_pb2.CreateApiKeyRequest(tenant_id=tenant.id, name="logs"), metadata=admin, timeout=20
        ).secret
        registry.WhoAmI(registry_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {api_key}")], timeout=20)
        for wrong in (new_admin_token(), new_api_key()):  # well shaped, unknown
            with pytest.raises(grpc.RpcError) as refused:
                registry.CreateTenant(registry_pb2.CreateTenantRequest(name="nope"),
                                      metadata=[("authorization", f"Bearer {wrong}")], timeout=20)  # fmt: skip
            assert refused.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    with grpc.insecure_channel(teacher_address) as channel:
        teacher = teacher_pb2_grpc.TeacherServiceStub(channel)
        metadata = [("authorization", f"Bearer {api_key}")]

        def set_key() -> teacher_pb2.ProviderKey:
            request = teacher_pb2.SetProviderKeyRequest(provider=teacher_pb2.PROVIDER_OPENAI, api_key=provider_key)
            return teacher.SetProviderKey(request, metadata=metadata, timeout=30)

        openai.valid_keys = {provider_key}
        assert set_key().last4 == provider_key[-4:]  # checked with the vendor, stored
        openai.valid_keys = {"k-another-key-0000"}  # the stored key, used and refused
        describe = teacher_pb2.DescribeToolRequest(teacher="openai:fake-model", description="Look up the weather.")
        with pytest.raises(grpc.RpcError):
            teacher.DescribeTool(describe, metadata=metadata, timeout=30)
        with pytest.raises(grpc.RpcError):  # a refused check
            set_key()
        openai.valid_keys = None
        openai.script({"status": 500, "message": f"internal error for key {provider_key}"})
        with pytest.raises(grpc.RpcError):  # the vendor quotes the key back
            set_key()
        teacher.ListProviderKeys(teacher_pb2.ListProviderKeysRequest(), metadata=metadata, timeout=20)
    assert sum(c.api_key == provider_key for c in openai.calls) >= 3  # the key did travel to the vendor
    return api_key
