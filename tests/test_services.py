"""The four services over real gRPC: health, reflection, authentication, tenant isolation."""

from __future__ import annotations

import hashlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from distillery import tokens
from distillery.common.v1 import common_pb2
from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2
from distillery.teacher.v1 import teacher_pb2
from distillery.trainer.v1 import trainer_pb2

SERVICE_NAMES = {
    "registry": "distillery.registry.v1.RegistryService",
    "ingest": "distillery.ingest.v1.IngestService",
    "teacher": "distillery.teacher.v1.TeacherService",
    "trainer": "distillery.trainer.v1.TrainerService",
}


def reflected_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        return {s.name for reply in replies for s in reply.list_services_response.service}


def test_each_service_is_healthy_and_reflection_lists_it(services):
    for name, full_name in SERVICE_NAMES.items():
        with grpc.insecure_channel(services.address(name)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", full_name):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        listed = reflected_services(services.address(name))
        assert full_name in listed
        assert "grpc.health.v1.Health" in listed


def calls_needing_a_key(client):
    return {
        "registry": lambda: client.registry.GetQuota(registry_pb2.GetQuotaRequest()),
        "ingest": lambda: client.ingest.ListDatasets(ingest_pb2.ListDatasetsRequest()),
        "teacher": lambda: client.teacher.ListProviderKeys(teacher_pb2.ListProviderKeysRequest()),
        "trainer": lambda: client.trainer.ListRuns(trainer_pb2.ListRunsRequest()),
    }


def test_a_call_without_a_key_is_unauthenticated(services, client_for):
    for name, call in calls_needing_a_key(client_for(None)).items():
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert "API key" in err.value.details()


def test_a_wrong_or_revoked_key_is_unauthenticated(services, client_for, make_tenant):
    from conftest import TenantKey

    tenant = make_tenant()
    forged = TenantKey(tenant.tenant_id, tenant.api_key[:-4] + "AAAA")
    for name, call in calls_needing_a_key(client_for(forged)).items():
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name

    client = client_for(tenant)
    assert client.registry.GetQuota(registry_pb2.GetQuotaRequest()).tenant_id == tenant.tenant_id
    key_id = client.registry.ListApiKeys(registry_pb2.ListApiKeysRequest()).keys[0].id
    client.registry.RevokeApiKey(registry_pb2.RevokeApiKeyRequest(id=key_id))
    with pytest.raises(grpc.RpcError) as err:
        client.registry.GetQuota(registry_pb2.GetQuotaRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_each_method_takes_the_tokens_its_access_table_names(services, make_tenant, client_for):
    from services.common import auth
    from services.ingest.access import ACCESS as INGEST
    from services.registry.access import ACCESS as REGISTRY
    from services.teacher.access import ACCESS as TEACHER
    from services.trainer.access import ACCESS as TRAINER

    tenant = make_tenant()
    as_service = auth.service_metadata(services.service_token, tenant.tenant_id)
    admin = [("authorization", f"Bearer {services.admin_token}")]
    key = [("authorization", f"Bearer {tenant.api_key}")]

    def call(name: str, method: str, request, metadata):
        table = {"registry": REGISTRY, "ingest": INGEST, "teacher": TEACHER, "trainer": TRAINER}[name]
        channel = grpc.insecure_channel(services.address(name))
        try:
            return channel.unary_unary(
                f"/{table.service}/{method}",
                request_serializer=type(request).SerializeToString,
                response_deserializer=lambda data: data,
            )(request, metadata=metadata, timeout=10)
        finally:
            channel.close()

    def refused(code, *args) -> str:
        with pytest.raises(grpc.RpcError) as err:
            call(*args)
        assert err.value.code() == code, (args[:2], err.value.details())
        return err.value.details()

    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    # Another service acts for the tenant on the tenant's methods of every service.
    call("registry", "WhoAmI", registry_pb2.WhoAmIRequest(), as_service)
    call("ingest", "ListDatasets", ingest_pb2.ListDatasetsRequest(), as_service)
    call("teacher", "ListProviderKeys", teacher_pb2.ListProviderKeysRequest(), as_service)
    call("trainer", "ListRuns", trainer_pb2.ListRunsRequest(), as_service)
    # The admin calls take the admin token only; a key is made by the admin or the tenant, not a service.
    assert "admin token" in refused(unauthenticated, "registry", "GetTenant", registry_pb2.GetTenantRequest(), key)
    call("registry", "GetTenant", registry_pb2.GetTenantRequest(id=tenant.tenant_id), admin)
    request = registry_pb2.CreateApiKeyRequest(name="by-service")
    assert "admin token" in refused(unauthenticated, "registry", "CreateApiKey", request, as_service)
    assert "admin token" in refused(unauthenticated, "registry", "CreateApiKey", request, [])
    # A training job's push takes its run's token: no key, service token or admin token does.
    push = trainer_pb2.ReportRunEventsRequest(run_id="run_nope")
    for metadata in ([], key, as_service, admin, [("authorization", f"Bearer {tokens.new_run_token()}")]):
        assert refused(unauthenticated, "trainer", "ReportRunEvents", push, metadata) == (
            "not a valid push token for this run"
        )
    # The key check itself is open.
    reply = call("registry", "AuthenticateKey", registry_pb2.AuthenticateKeyRequest(api_key=tenant.api_key), [])
    assert registry_pb2.AuthenticateKeyResponse.FromString(reply).tenant_id == tenant.tenant_id


def test_keys_are_stored_hashed(services, make_tenant):
    import psycopg

    tenant = make_tenant()
    with psycopg.connect(services.postgres_url) as conn:
        stored = conn.execute(
            "SELECT key_hash, prefix FROM registry.api_keys WHERE tenant_id = %s", (tenant.tenant_id,)
        ).fetchone()
        dump = " ".join(str(row) for row in conn.execute("SELECT * FROM registry.api_keys").fetchall())
    assert stored == (hashlib.sha256(tenant.api_key.encode()).hexdigest(), tenant.api_key[:9])
    assert tenant.api_key not in dump


def upload(
    client, data: bytes, name: str = "pairs.jsonl", sha256: str | None = None, size: int | None = None,
    kind: int = ingest_pb2.DATASET_KIND_PAIRS,
):  # fmt: skip
    header = ingest_pb2.UploadHeader(
        filename=name, kind=kind, format=ingest_pb2.FILE_FORMAT_JSONL,
        size_bytes=len(data) if size is None else size, sha256=sha256 or hashlib.sha256(data).hexdigest(),
    )  # fmt: skip
    chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    messages = [ingest_pb2.UploadDatasetRequest(header=header)]
    messages += [ingest_pb2.UploadDatasetRequest(chunk=ingest_pb2.Chunk(data=c)) for c in chunks]
    return client.ingest.UploadDataset(iter(messages))


ROWS = b"".join(b'{"system_prompt": "Be brief.", "input": "q%d", "output": "a%d"}\n' % (i, i) for i in range(100))


def test_another_tenants_dataset_is_not_found(services, client_for, make_tenant):
    alice, bob = client_for(make_tenant()), client_for(make_tenant())
    dataset = upload(alice, ROWS).dataset
    assert alice.ingest.GetDataset(ingest_pb2.GetDatasetRequest(id=dataset.id)).size_bytes == len(ROWS)
    with pytest.raises(grpc.RpcError) as err:
        bob.ingest.GetDataset(ingest_pb2.GetDatasetRequest(id=dataset.id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert dataset.id not in {d.id for d in bob.ingest.ListDatasets(ingest_pb2.ListDatasetsRequest()).datasets}
    # The same bytes uploaded by bob make bob's own version, not a view of alice's.
    assert upload(bob, ROWS).reused is False


def test_identical_upload_reuses_the_version_and_bad_uploads_are_refused(services, client_for, make_tenant):
    client = client_for(make_tenant())
    first = upload(client, ROWS)
    again = upload(client, ROWS, name="renamed.jsonl")
    assert (first.reused, again.reused) == (False, True)
    assert again.dataset.id == first.dataset.id
    assert first.dataset.id.startswith("ds_") and first.dataset.source_sha256 == hashlib.sha256(ROWS).hexdigest()

    with pytest.raises(grpc.RpcError) as err:
        upload(client, ROWS + b"x", sha256=hashlib.sha256(ROWS).hexdigest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sha256 mismatch" in err.value.details()

    with pytest.raises(grpc.RpcError) as err:
        upload(client, ROWS, size=len(ROWS) + 10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cut short" in err.value.details()

    with pytest.raises(grpc.RpcError) as err:
        upload(client, ROWS, name="../../etc/passwd")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = client.ingest.ListDatasets(ingest_pb2.ListDatasetsRequest()).datasets
    assert [d.id for d in listed] == [first.dataset.id]


def test_another_tenants_run_is_not_found(services, client_for, make_tenant):
    from services.trainer import runs

    owner, other = make_tenant(), make_tenant()
    run = services.loop.run(create_run(services, owner.tenant_id))
    assert client_for(owner).trainer.GetRun(trainer_pb2.GetRunRequest(id=run.id)).state == trainer_pb2.RUN_STATE_QUEUED
    for call in (
        lambda c: c.trainer.GetRun(trainer_pb2.GetRunRequest(id=run.id)),
        lambda c: c.trainer.CancelRun(trainer_pb2.CancelRunRequest(id=run.id)),
        lambda c: list(c.trainer.WatchRun(trainer_pb2.WatchRunRequest(id=run.id))),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(client_for(other))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert services.loop.run(runs_state(services, owner.tenant_id, run.id)) == trainer_pb2.RUN_STATE_QUEUED
    assert runs.FINAL  # the module under test is the real one


async def create_run(services, tenant_id: str, key: str = ""):
    from services.common import db
    from services.trainer import runs

    pool = await db.open_pool(services.postgres_url, "trainer", max_size=2)
    try:
        run = runs.Run(
            id=runs.new_run_id(), tenant_id=tenant_id, idempotency_key=key, path=3, mode=1, state=0,
            request={"path": "TRAINING_PATH_FINETUNE_TEXT", "studentModel": "tiny"}, created_at=None, updated_at=None,  # type: ignore[arg-type]
        )  # fmt: skip
        created, _ = await runs.create(pool, run)
        # Held by a lease of nobody's, so the trainer's supervisor leaves it to the test.
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE runs SET lease_owner = 'test', lease_until = now() + interval '1 hour' WHERE id = %s",
                (created.id,),
            )
        return created
    finally:
        await pool.close()


async def runs_state(services, tenant_id: str, run_id: str) -> int:
    from services.common import db
    from services.trainer import runs

    pool = await db.open_pool(services.postgres_url, "trainer", max_size=2)
    try:
        return (await runs.get(pool, tenant_id, run_id)).state
    finally:
        await pool.close()


def test_lists_page_newest_first_with_tokens(services, client_for, make_tenant):
    client = client_for(make_tenant())
    uploaded = [upload(client, ROWS + b"\n" * i).dataset.id for i in range(5)]
    seen, token, pages = [], "", 0
    while True:
        page = client.ingest.ListDatasets(
            ingest_pb2.ListDatasetsRequest(page=common_pb2.PageRequest(page_size=2, page_token=token))
        )
        seen += [d.id for d in page.datasets]
        pages += 1
        token = page.page.next_page_token
        if not token:
            break
    assert (seen, pages) == (uploaded[::-1], 3)
    other_kind = client.ingest.ListDatasets(ingest_pb2.ListDatasetsRequest(kind=ingest_pb2.DATASET_KIND_ASR))
    assert list(other_kind.datasets) == []
