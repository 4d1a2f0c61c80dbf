"""Bring-your-own provider keys: checked with the provider, sealed at rest, per tenant, never shown.

The teacher runs in process against fake vendor APIs (the real SDKs over loopback); the
canary test follows one key through gRPC, the CLI, logs, spans, errors and the database.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import psycopg
import pytest
from click.testing import CliRunner
from conftest import SPANS
from psycopg import sql
from rpc_refusals import named_field, raised
from test_tracing_and_cli import cli_env

from distillery.cli.main import cli
from distillery.teacher.v1 import teacher_pb2
from services.common import db
from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.common.logs import JsonFormatter
from services.teacher.envelope import MasterKey, MasterKeyError, SealedKeyError, seal, unseal
from services.teacher.keys import KeyStore
from services.teacher.settings import ProviderSettings

OPENAI, ANTHROPIC, GOOGLE = teacher_pb2.PROVIDER_OPENAI, teacher_pb2.PROVIDER_ANTHROPIC, teacher_pb2.PROVIDER_GOOGLE


def new_key(prefix: str = "sk-test-") -> str:
    return prefix + secrets.token_urlsafe(24)


def set_key(client, provider: int, key: str, skip_check: bool = False) -> teacher_pb2.ProviderKey:
    request = teacher_pb2.SetProviderKeyRequest(provider=provider, api_key=key, skip_check=skip_check)
    return client.teacher.SetProviderKey(request)


def listed(client) -> list[teacher_pb2.ProviderKey]:
    return list(client.teacher.ListProviderKeys(teacher_pb2.ListProviderKeysRequest()).keys)


def refusal(call) -> tuple[grpc.StatusCode, str, str, grpc.RpcError]:
    """The status code, message and BadRequest field of a refused call, and the error itself."""
    err = raised(call)
    return err.code(), err.details(), named_field(err), err


@contextmanager
def key_store(services, **changes: Any) -> Iterator[KeyStore]:
    """A KeyStore on the teacher's schema with the test teacher's settings, ``changes`` applied."""
    pool = services.loop.run(db.open_pool(services.postgres_url, "teacher", max_size=2))
    try:
        yield KeyStore(pool, services.teacher_settings(**changes))
    finally:
        services.loop.run(pool.close())


def teacher_rows(services) -> list[tuple[str, tuple[Any, ...]]]:
    """Every row of every table of the teacher's schema, by table."""
    rows = []
    with psycopg.connect(services.postgres_url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'teacher'"
        ).fetchall()
        for (table,) in tables:
            query = sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier("teacher"), sql.Identifier(table))
            rows += [(table, row) for row in conn.execute(query).fetchall()]
    return rows


def stored_blob(services, tenant_id: str, provider: str) -> bytes:
    with psycopg.connect(services.postgres_url) as conn:
        row = conn.execute(
            "SELECT ciphertext FROM teacher.provider_keys WHERE tenant_id = %s AND provider = %s", (tenant_id, provider)
        ).fetchone()
    assert row is not None
    return bytes(row[0])


# Set, list, delete


def test_a_key_is_checked_with_the_provider_and_only_its_last_four_come_back(
    services, make_tenant, client_for, providers
):
    key = new_key()
    providers["openai"].valid_keys = {key}
    client = client_for(make_tenant())

    stored = set_key(client, OPENAI, f"  {key}\n")  # pasted with whitespace around it

    assert stored.provider == OPENAI and stored.last4 == key[-4:]
    assert stored.HasField("created_at") and stored.HasField("checked_at")
    checks = providers["openai"].calls
    assert [(c.method, c.path, c.api_key) for c in checks] == [("GET", "/v1/models", key)]
    [shown] = listed(client)
    assert (shown.provider, shown.last4) == (OPENAI, key[-4:])
    assert key not in str(shown) and key[:-4] not in shown.SerializeToString().decode(errors="replace")


@pytest.mark.parametrize("provider,name", [(ANTHROPIC, "anthropic"), (GOOGLE, "google")])
def test_anthropic_and_google_keys_are_checked_with_their_own_api(
    services, make_tenant, client_for, providers, provider, name
):
    key = new_key("k-")
    providers[name].valid_keys = {key}
    client = client_for(make_tenant())
    assert set_key(client, provider, key).last4 == key[-4:]
    assert [c.api_key for c in providers[name].calls] == [key]

    code, message, field, _ = refusal(lambda: set_key(client, provider, new_key("k-")))
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "api_key")
    assert f"the {name} key was refused by the provider" in message


def test_a_refused_key_is_not_stored(services, make_tenant, client_for, providers):
    providers["openai"].valid_keys = {new_key()}
    client = client_for(make_tenant())
    wrong = new_key()
    code, message, field, _ = refusal(lambda: set_key(client, OPENAI, wrong))
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "api_key")
    assert message.startswith("the openai key was refused by the provider")
    assert wrong[:8] not in message and wrong[-8:] not in message
    assert listed(client) == []


def test_skip_check_stores_without_calling_the_provider(services, make_tenant, client_for, providers):
    client = client_for(make_tenant())
    stored = set_key(client, GOOGLE, new_key("AIza"), skip_check=True)
    assert stored.last4 and not stored.HasField("checked_at")
    assert providers["google"].calls == []


def test_setting_again_replaces_the_key(services, make_tenant, client_for, providers):
    client = client_for(make_tenant())
    first, second = new_key(), new_key()
    set_key(client, OPENAI, first)
    set_key(client, OPENAI, second)
    assert [k.last4 for k in listed(client)] == [second[-4:]]


def test_delete_then_not_found(services, make_tenant, client_for, providers):
    client = client_for(make_tenant())
    set_key(client, ANTHROPIC, new_key("sk-ant-"))
    set_key(client, OPENAI, new_key())
    client.teacher.DeleteProviderKey(teacher_pb2.DeleteProviderKeyRequest(provider=ANTHROPIC))
    assert [k.provider for k in listed(client)] == [OPENAI]
    code, message, field, _ = refusal(
        lambda: client.teacher.DeleteProviderKey(teacher_pb2.DeleteProviderKeyRequest(provider=ANTHROPIC))
    )
    assert (code, message, field) == (grpc.StatusCode.NOT_FOUND, "no anthropic key is stored", "provider")


@pytest.mark.parametrize(
    "provider,key,field,words",
    [
        (OPENAI, "   ", "api_key", "the openai key is empty"),
        (OPENAI, "sk-has a space-123456", "api_key", "spaces, line breaks"),
        (OPENAI, "sk-1", "api_key", "too short"),
        (OPENAI, "sk-" + "x" * 2000, "api_key", "over 1024"),
        (OPENAI, "sk-ant-api03-abcdefghijkl", "api_key", "looks like a key for anthropic"),
        (ANTHROPIC, "AIzaSyabcdefghijklmnop", "api_key", "looks like a key for google"),
        (teacher_pb2.PROVIDER_PLATFORM, "sk-whatever-123456", "provider", "takes no tenant key"),
        (teacher_pb2.PROVIDER_UNSPECIFIED, "sk-whatever-123456", "provider", "provider is required"),
    ],
)
def test_malformed_keys_are_refused_before_any_call(
    services, make_tenant, client_for, providers, provider, key, field, words
):
    client = client_for(make_tenant())
    code, message, named, _ = refusal(lambda: set_key(client, provider, key))
    assert (code, named) == (grpc.StatusCode.INVALID_ARGUMENT, field)
    assert words in message and (not key.strip() or key.strip() not in message)
    assert all(fake.calls == [] for fake in providers.values())


def test_an_unreachable_provider_is_unavailable_not_a_bad_key(services, make_tenant, providers):
    tenant = make_tenant()
    nowhere = {"openai": ProviderSettings(base_url="http://127.0.0.1:1/v1")}
    with key_store(services, providers=nowhere) as store:
        with pytest.raises(Unavailable, match=r"could not check the openai key.*--skip-check"):
            services.loop.run(store.set(tenant.tenant_id, "openai", new_key(), skip_check=False))
        assert services.loop.run(store.list(tenant.tenant_id)) == []

    providers["openai"].script({"status": 503})
    with key_store(services) as store, pytest.raises(Unavailable, match="did not answer"):
        services.loop.run(store.set(tenant.tenant_id, "openai", new_key(), skip_check=False))


# Tenants, encryption at rest, the master key


def test_tenants_never_see_or_use_each_others_keys(services, make_tenant, client_for, providers):
    a, b = make_tenant(), make_tenant()
    key = new_key()
    set_key(client_for(a), OPENAI, key)
    client_b = client_for(b)
    assert listed(client_b) == []
    code, *_ = refusal(
        lambda: client_b.teacher.DeleteProviderKey(teacher_pb2.DeleteProviderKeyRequest(provider=OPENAI))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert [k.last4 for k in listed(client_for(a))] == [key[-4:]]

    with key_store(services) as store:
        mine = services.loop.run(store.credentials(a.tenant_id, "openai"))
        assert (mine.api_key, mine.billed, mine.base_url) == (key, False, providers["openai"].base_url)
        assert key not in repr(mine)
        with pytest.raises(FailedPrecondition) as none:
            services.loop.run(store.credentials(b.tenant_id, "openai"))
    assert none.value.message == (
        "no openai key: bring your own with `distillery keys set openai` "
        "(or the operator sets DISTILLERY_OPENAI_API_KEY)"
    )


def test_the_database_holds_only_ciphertext_bound_to_the_tenant(services, make_tenant, client_for, providers):
    a, b = make_tenant(), make_tenant()
    key = new_key()
    set_key(client_for(a), ANTHROPIC, key)
    blob = stored_blob(services, a.tenant_id, "anthropic")
    assert key.encode() not in blob and key[:8].encode() not in blob and key[-8:].encode() not in blob

    master = MasterKey.from_setting(services.master_key)
    assert blob[0] == 1 and blob[1:9] == master.id  # version, then the master key's id
    assert unseal(master, a.tenant_id, "anthropic", blob) == key
    with pytest.raises(SealedKeyError, match="does not open for this tenant"):
        unseal(master, b.tenant_id, "anthropic", blob)
    with pytest.raises(SealedKeyError):
        unseal(master, a.tenant_id, "openai", blob)
    tampered = bytearray(blob)
    tampered[-3] ^= 0x01
    with pytest.raises(SealedKeyError) as caught:
        unseal(master, a.tenant_id, "anthropic", bytes(tampered))
    assert key not in str(caught.value)
    other = MasterKey(secrets.token_bytes(32))
    with pytest.raises(SealedKeyError, match="another master key"):
        unseal(other, a.tenant_id, "anthropic", blob)
    assert seal(master, a.tenant_id, "anthropic", key) != seal(master, a.tenant_id, "anthropic", key)

    # Copied onto another tenant's row, the blob is refused rather than used.
    with psycopg.connect(services.postgres_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO teacher.provider_keys (tenant_id, provider, ciphertext, last4)"
            " VALUES (%s, 'anthropic', %s, 'abcd')",
            (b.tenant_id, blob),
        )
    with key_store(services) as store, pytest.raises(SealedKeyError):
        services.loop.run(store.credentials(b.tenant_id, "anthropic"))


@pytest.mark.parametrize("value", ["", "bad-secret-value-not-base64!!", "c2hvcnQ="])
def test_a_missing_or_bad_master_key_names_the_setting_never_the_value(services, make_tenant, providers, value):
    tenant = make_tenant()
    with key_store(services, master_key=value) as store:
        with pytest.raises(MasterKeyError) as caught:
            services.loop.run(store.set(tenant.tenant_id, "openai", new_key(), skip_check=False))
        # Without a stored key, credentials need no master key: the deployment's settings answer.
        with pytest.raises(FailedPrecondition, match="no openai key"):
            services.loop.run(store.credentials(tenant.tenant_id, "openai"))
    message = caught.value.message
    assert isinstance(caught.value, FailedPrecondition)
    assert "DISTILLERY_MASTER_KEY" in message and "base64 of 32 random bytes" in message
    assert "os.urandom(32)" in message
    assert not value or value not in message
    assert providers["openai"].calls == []  # refused before the key went anywhere


# Which credentials a teacher call uses


def test_credentials_prefer_the_tenants_key_then_the_deployments(services, make_tenant, providers):
    tenant = make_tenant()
    platform_url = providers["platform"].base_url
    deployment = {
        name: ProviderSettings(base_url=fake.base_url, api_key=f"sk-deployment-{name}")
        for name, fake in providers.items()
    }
    with key_store(services, providers=deployment) as store:
        run = services.loop.run
        billed = run(store.credentials(tenant.tenant_id, "openai"))
        assert (billed.api_key, billed.billed) == ("sk-deployment-openai", True)
        own = new_key()
        run(store.set(tenant.tenant_id, "openai", own, skip_check=True))
        byok = run(store.credentials(tenant.tenant_id, "openai"))
        assert (byok.api_key, byok.billed, byok.timeout_s) == (own, False, 2.0)
        platform = run(store.credentials(tenant.tenant_id, "platform"))
        assert (platform.base_url, platform.billed) == (platform_url, True)
        with pytest.raises(InvalidArgument, match="unknown provider"):
            run(store.credentials(tenant.tenant_id, "mystery"))
    no_platform = {"platform": ProviderSettings()}
    with key_store(services, providers=no_platform) as store, pytest.raises(FailedPrecondition, match="PLATFORM_BASE"):
        services.loop.run(store.credentials(tenant.tenant_id, "platform"))


# The CLI


def test_the_cli_sets_lists_and_deletes_keys(services, make_tenant, providers):
    tenant = make_tenant()
    env = cli_env(services, tenant.api_key)
    runner = CliRunner()
    key = new_key()
    providers["openai"].valid_keys = {key}

    typed = runner.invoke(cli, ["keys", "set", "openai"], input=f"{key}\n", env=env)  # the hidden prompt
    assert typed.exit_code == 0, typed.output
    assert f"stored the openai key ending in …{key[-4:]} (checked with the provider)" in typed.output
    assert key not in typed.output

    google = new_key("AIza")
    from_env = runner.invoke(
        cli, ["keys", "set", "google", "--skip-check"], env={**env, "DISTILLERY_PROVIDER_KEY": google}
    )
    assert from_env.exit_code == 0 and "(not checked)" in from_env.output, from_env.output
    assert providers["google"].calls == []

    table = runner.invoke(cli, ["keys", "list"], env=env)
    assert table.exit_code == 0 and f"…{key[-4:]}" in table.output and "not checked" in table.output
    as_json = runner.invoke(cli, ["keys", "list", "--json"], env=env)
    assert as_json.exit_code == 0
    rows = json.loads(as_json.output)
    assert [(r["provider"], r["last4"]) for r in rows] == [("google", google[-4:]), ("openai", key[-4:])]

    refused = runner.invoke(cli, ["keys", "set", "openai", "--key", new_key()], env=env)
    assert refused.exit_code == 1 and "the openai key was refused by the provider" in refused.output

    deleted = runner.invoke(cli, ["keys", "delete", "openai"], env=env)
    assert deleted.exit_code == 0 and "deleted the openai key" in deleted.output
    again = runner.invoke(cli, ["keys", "delete", "openai"], env=env)
    assert again.exit_code == 1 and "not_found: no openai key is stored" in again.output


# The canary: one key followed everywhere it could leak


def test_a_canary_key_never_appears_in_logs_errors_spans_or_the_database(
    services, make_tenant, client_for, providers, caplog
):
    canary = f"sk-canary-{secrets.token_hex(16)}"
    fragments = [canary, canary[:8], canary[-8:], canary[10:26]]
    tenant = make_tenant()
    client = client_for(tenant)
    env = cli_env(services, tenant.api_key)
    caplog.set_level(logging.DEBUG)
    formatted = io.StringIO()
    handler = logging.StreamHandler(formatted)
    handler.setFormatter(JsonFormatter("teacher"))
    logging.getLogger().addHandler(handler)
    SPANS.clear()
    seen: list[str] = []  # every text a person or a collector could see
    try:
        # A key the provider takes, through gRPC and through the CLI.
        providers["openai"].valid_keys = {canary}
        set_key(client, OPENAI, canary)
        result = CliRunner().invoke(cli, ["keys", "set", "openai"], input=canary + "\n", env=env)
        assert result.exit_code == 0, result.output
        seen.append(result.output)
        # The stored key used for a teacher call, which the provider then refuses.
        description = "Look up the weather for a city; the city name is required."
        providers["openai"].valid_keys = {"sk-another-key-0000"}
        code, message, _, err = refusal(
            lambda: client.teacher.DescribeTool(
                teacher_pb2.DescribeToolRequest(teacher="openai:fake-model", description=description)
            )
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "your openai key was refused" in message
        seen += [message, repr(err.trailing_metadata())]
        # A refused check, through gRPC and the CLI: the vendor echoes part of the key it refuses.
        code, message, _, err = refusal(lambda: set_key(client, OPENAI, canary))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        seen += [message, repr(err.trailing_metadata())]
        result = CliRunner().invoke(cli, ["keys", "set", "openai", "--key", canary], env=env)
        assert result.exit_code == 1
        seen.append(result.output)
        # A vendor error that quotes the whole key back.
        providers["openai"].valid_keys = None
        providers["openai"].script({"status": 500, "message": f"internal error for key {canary}"})
        code, message, _, err = refusal(lambda: set_key(client, OPENAI, canary))
        assert code == grpc.StatusCode.UNAVAILABLE
        seen += [message, repr(err.trailing_metadata())]
        assert all(c.api_key == canary for c in providers["openai"].calls if c.api_key.startswith("sk-canary"))
        assert sum(c.api_key == canary for c in providers["openai"].calls) >= 4  # the key did travel to the vendor
    finally:
        logging.getLogger().removeHandler(handler)

    for record in caplog.records:
        text = repr(record.__dict__) + record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        seen.append(text)
    seen.append(formatted.getvalue())
    assert "rpc /distillery.teacher.v1.TeacherService/SetProviderKey" in formatted.getvalue()
    spans = SPANS.get_finished_spans()
    assert any(s.name.endswith("TeacherService/SetProviderKey") for s in spans)
    seen += [s.to_json() for s in spans]
    for table, row in teacher_rows(services):
        for value in row:
            seen.append(f"{table}: {value.hex() if isinstance(value, bytes | memoryview) else value}")
            if isinstance(value, bytes | memoryview):
                seen.append(bytes(value).decode("latin-1"))
    postgres_log = services.workdir / "logs" / "postgres.log"
    if postgres_log.exists():
        seen.append(postgres_log.read_text(errors="replace"))

    everything = "\n".join(seen)
    for fragment in fragments:
        assert fragment not in everything, f"{fragment!r} leaked"
        assert fragment.encode().hex() not in everything
