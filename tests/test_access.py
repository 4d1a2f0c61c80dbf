"""The access tables: every RPC of every service has an entry, and the auth interceptor
enforces the entries (which token each method takes, the refusals' codes and messages).

Fast: the interceptor's decision is called directly, with fake key, admin and run checks.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from distillery import tokens
from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2
from distillery.teacher.v1 import teacher_pb2
from distillery.trainer.v1 import trainer_pb2
from services.common import auth
from services.common.auth import Access, AccessTable
from services.common.errors import PermissionDenied, Unauthenticated
from services.common.interceptors import AuthInterceptor
from services.ingest.access import ACCESS as INGEST
from services.registry.access import ACCESS as REGISTRY
from services.teacher.access import ACCESS as TEACHER
from services.trainer.access import ACCESS as TRAINER

TABLES = {
    "registry": (REGISTRY, registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]),
    "ingest": (INGEST, ingest_pb2.DESCRIPTOR.services_by_name["IngestService"]),
    "teacher": (TEACHER, teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"]),
    "trainer": (TRAINER, trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]),
}


@pytest.mark.parametrize("name", TABLES)
def test_every_rpc_of_every_service_has_exactly_one_entry(name: str) -> None:
    table, descriptor = TABLES[name]
    in_proto = {m.name for m in descriptor.methods}
    assert table.service == descriptor.full_name
    assert table.missing(in_proto) == [], f"{name}: RPCs without an access entry"
    assert sorted(set(table.methods) - in_proto) == [], f"{name}: entries for RPCs the proto does not have"


def test_the_tables_say_who_calls_what() -> None:
    entries = [(t.service.rsplit(".", 1)[-1], m, a) for t, _ in TABLES.values() for m, a in t.methods.items()]
    assert {(s, m) for s, m, a in entries if a == Access.OPEN} == {("RegistryService", "AuthenticateKey")}
    assert {m for m, a in REGISTRY.methods.items() if a == Access.SERVICE} == {
        "ReserveQuota", "ReleaseQuota", "RegisterModel",
    }  # fmt: skip
    assert {m for m, a in INGEST.methods.items() if a == Access.SERVICE} == {"CaptureTraffic"}
    admin = {m for m, a in REGISTRY.methods.items() if Access.ADMIN in a}
    assert admin == {"CreateTenant", "GetTenant", "CreateApiKey", "SetTenantTier"}
    assert {(s, m) for s, m, a in entries if Access.ADMIN in a} == {("RegistryService", m) for m in admin}
    assert {(s, m) for s, m, a in entries if a == Access.RUN} == {("TrainerService", "ReportRunEvents")}
    # What the trainer and the teacher call on a tenant's behalf takes the service token.
    for table, method in (
        (INGEST, "GetDataset"), (INGEST, "SplitDataset"), (INGEST, "UploadDataset"), (INGEST, "ListTools"),
        (TEACHER, "CreateGenerationJob"), (TEACHER, "GetGenerationJob"), (TEACHER, "EstimateJob"),
        # the gateway: routing, streaming and the proxy mode
        (REGISTRY, "GetDeployment"), (REGISTRY, "GenerateStream"), (TEACHER, "Complete"),
    ):  # fmt: skip
        assert Access.SERVICE in table.methods[method], method


def test_a_table_refuses_entries_that_mix_open_or_run_tokens_with_others() -> None:
    with pytest.raises(ValueError, match="open"):
        AccessTable("x.v1.S", {"M": Access.OPEN | Access.KEY})
    with pytest.raises(ValueError, match="run-token"):
        AccessTable("x.v1.S", {"M": Access.RUN | Access.SERVICE})
    with pytest.raises(ValueError, match="why"):
        AccessTable("x.v1.S", {"M": Access.SERVICE}, why={"N": "no such method"})
    with pytest.raises(ValueError, match="run verifier"):
        AuthInterceptor([AccessTable("x.v1.S", {"M": Access.RUN})], _resolve)


# --- the interceptor's decision ---

SERVICE_TOKEN = tokens.new_service_token()
ADMIN_TOKEN = tokens.new_admin_token()
KEY = tokens.new_api_key()
RUN_TOKEN = tokens.new_run_token()
TABLE = AccessTable(
    "x.v1.S",
    {
        "Open": Access.OPEN,
        "Tenant": Access.TENANT,
        "KeyOnly": Access.KEY,
        "Admin": Access.ADMIN,
        "AdminOrKey": Access.ADMIN | Access.KEY,
        "Service": Access.SERVICE,
        "Run": Access.RUN,
    },
    why={"Service": "the trainer calls it for its runs"},
)


async def _resolve(key: str) -> auth.Caller:
    if key != KEY:
        raise Unauthenticated("invalid or revoked API key")
    return auth.Caller(tenant_id="ten_a", tier=1, key_id="key_a")


async def _verify_run(token: str, run_id: str) -> auth.Caller:
    if token != RUN_TOKEN or run_id != "run_a":
        raise Unauthenticated("not a valid push token for this run")
    return auth.run_caller("ten_a", run_id)


INTERCEPTOR = AuthInterceptor([TABLE], _resolve, SERVICE_TOKEN, lambda t: t == ADMIN_TOKEN, _verify_run)


def bearer(token: str | None, tenant: str | None = None) -> list[tuple[str, str]]:
    metadata = [] if token is None else [("authorization", f"Bearer {token}")]
    return metadata + ([] if tenant is None else [(auth.TENANT_HEADER, tenant)])


def authorize(method: str, metadata: list[tuple[str, str]], request: Any = None) -> auth.Caller | None:
    return asyncio.run(INTERCEPTOR.authorize(f"/x.v1.S/{method}", metadata, request))


def refusal(method: str, metadata: list[tuple[str, str]], request: Any = None) -> Exception:
    with pytest.raises((Unauthenticated, PermissionDenied)) as err:
        authorize(method, metadata, request)
    return err.value


def test_a_method_missing_from_the_table_is_refused_whatever_the_token() -> None:
    for metadata in (bearer(None), bearer(KEY), bearer(ADMIN_TOKEN), bearer(SERVICE_TOKEN, "ten_a")):
        err = refusal("NotInTheTable", metadata)
        assert isinstance(err, PermissionDenied) and "access table" in str(err)


def test_an_open_method_takes_no_token_and_sets_no_caller() -> None:
    assert authorize("Open", bearer(None)) is None
    assert authorize("Open", bearer("garbage")) is None


def test_a_tenant_method_takes_the_tenant_key_or_the_service_token_for_a_tenant() -> None:
    assert authorize("Tenant", bearer(KEY)) == auth.Caller("ten_a", 1, "key_a")
    service = authorize("Tenant", bearer(SERVICE_TOKEN, "ten_b"))
    assert service is not None and service.tenant_id == "ten_b" and auth.is_service(service)
    err = refusal("Tenant", bearer(None))
    assert isinstance(err, Unauthenticated) and str(err).startswith("no API key")
    assert "TENANT" in str(refusal("Tenant", bearer(SERVICE_TOKEN))).upper()  # the tenant header is missing
    for token in (ADMIN_TOKEN, RUN_TOKEN, KEY[:-2] + "xx", tokens.new_service_token()):
        assert isinstance(refusal("Tenant", bearer(token, "ten_a")), Unauthenticated), token


def test_a_key_only_method_refuses_the_service_token() -> None:
    assert authorize("KeyOnly", bearer(KEY)) == auth.Caller("ten_a", 1, "key_a")
    assert isinstance(refusal("KeyOnly", bearer(SERVICE_TOKEN, "ten_a")), Unauthenticated)


def test_an_admin_method_takes_the_admin_token_only() -> None:
    assert authorize("Admin", bearer(ADMIN_TOKEN)) == auth.ADMIN_CALLER
    for metadata in (bearer(None), bearer(KEY), bearer(SERVICE_TOKEN, "ten_a"), bearer(RUN_TOKEN)):
        err = refusal("Admin", metadata)
        assert isinstance(err, Unauthenticated) and "admin token" in str(err), metadata


def test_create_api_key_takes_the_admin_token_or_a_tenant_key_not_the_service_token() -> None:
    assert authorize("AdminOrKey", bearer(ADMIN_TOKEN)) == auth.ADMIN_CALLER
    assert authorize("AdminOrKey", bearer(KEY)) == auth.Caller("ten_a", 1, "key_a")
    for metadata in (bearer(None), bearer(SERVICE_TOKEN, "ten_a")):
        err = refusal("AdminOrKey", metadata)
        assert isinstance(err, Unauthenticated) and "API key of the tenant or the admin token" in str(err)


def test_a_service_method_denies_a_tenant_key_and_says_why() -> None:
    service = authorize("Service", bearer(SERVICE_TOKEN, "ten_a"))
    assert service is not None and service.tenant_id == "ten_a" and auth.is_service(service)
    err = refusal("Service", bearer(KEY))
    assert isinstance(err, PermissionDenied)
    assert str(err) == "Service takes the service token only: the trainer calls it for its runs"
    # No token, a wrong key, a token that only looks like the service token, or no tenant: Unauthenticated.
    for metadata in (
        bearer(None), bearer(KEY[:-2] + "xx"), bearer(tokens.new_service_token(), "ten_a"), bearer(SERVICE_TOKEN),
        bearer(ADMIN_TOKEN),
    ):  # fmt: skip
        assert isinstance(refusal("Service", metadata), Unauthenticated), metadata


def test_a_run_method_takes_the_token_of_the_run_its_request_names() -> None:
    pushed = trainer_pb2.ReportRunEventsRequest(run_id="run_a")
    caller = authorize("Run", bearer(RUN_TOKEN), pushed)
    assert caller == auth.run_caller("ten_a", "run_a") and caller.run_id == "run_a"
    for metadata, request in (
        (bearer(None), pushed),
        (bearer(tokens.new_run_token()), pushed),
        (bearer(RUN_TOKEN), trainer_pb2.ReportRunEventsRequest(run_id="run_b")),
        (bearer(RUN_TOKEN), trainer_pb2.ReportRunEventsRequest()),
        (bearer(RUN_TOKEN), None),  # a stream of requests names no run
        (bearer(KEY), pushed),
        (bearer(SERVICE_TOKEN, "ten_a"), pushed),
    ):
        err = refusal("Run", metadata, request)
        assert isinstance(err, Unauthenticated) and str(err) == "not a valid push token for this run"


def test_without_an_admin_check_or_service_token_those_tokens_are_never_taken() -> None:
    bare = AuthInterceptor([TABLE], _resolve, "", None, _verify_run)
    with pytest.raises(Unauthenticated):
        asyncio.run(bare.authorize("/x.v1.S/Admin", bearer(ADMIN_TOKEN)))
    with pytest.raises(Unauthenticated):  # taken for an API key, and no key
        asyncio.run(bare.authorize("/x.v1.S/Tenant", bearer(SERVICE_TOKEN, "ten_a")))
    with pytest.raises(Unauthenticated):
        asyncio.run(bare.authorize("/x.v1.S/Service", bearer(SERVICE_TOKEN, "ten_a")))
