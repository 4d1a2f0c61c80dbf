"""The private-model allowance: reserve at run start, commit at registration, free on delete."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from distillery import tokens
from distillery.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common import auth


def quota_failure(err: grpc.RpcError) -> error_details_pb2.QuotaFailure:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                failure = error_details_pb2.QuotaFailure()
                if detail.Unpack(failure):
                    return failure
    raise AssertionError("no QuotaFailure detail in the error")


def test_tier_allowances_default_to_3_10_50(services, make_tenant, client_for):
    for tier, allowance in (
        (registry_pb2.TIER_STANDARD, 3),
        (registry_pb2.TIER_STARTER, 10),
        (registry_pb2.TIER_PRO, 50),
    ):
        quota = client_for(make_tenant(tier=tier)).registry.GetQuota(registry_pb2.GetQuotaRequest())
        assert (quota.tier, quota.allowance, quota.used, quota.reserved, quota.available) == (
            tier,
            allowance,
            0,
            0,
            allowance,
        )


def register(service, run_id: str) -> registry_pb2.Model:
    """Register as the trainer does when a run ends (``service`` is a ``service_registry_for`` stub)."""
    return service.RegisterModel(
        registry_pb2.RegisterModelRequest(
            run_id=run_id, name="support-bot", path=3, base_model="tiny-llama",
            artifact_kind=registry_pb2.ARTIFACT_KIND_LORA_ADAPTER, artifact_uri=f"tenants/x/models/{run_id}",
            metrics={"eval_loss": 1.25},
        )
    )  # fmt: skip


def test_the_allowance_refuses_runs_beyond_it_and_frees_slots(services, make_tenant, client_for, service_registry_for):
    tenant = make_tenant(allowance=2)
    client, service = client_for(tenant), service_registry_for(tenant)
    reserve = lambda run: service.ReserveQuota(registry_pb2.ReserveQuotaRequest(run_id=run))  # noqa: E731
    assert reserve("run_a").state == "reserved"
    assert reserve("run_a").state == "reserved"  # idempotent: still one slot
    assert reserve("run_b").state == "reserved"
    with pytest.raises(grpc.RpcError) as err:
        reserve("run_c")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "allowance" in err.value.details() and "models delete" in err.value.details()
    assert "allowance 2" in quota_failure(err.value).violations[0].description

    # A run that ends without a model gives its slot back.
    assert service.ReleaseQuota(registry_pb2.ReleaseQuotaRequest(run_id="run_b")).state == "released"
    assert reserve("run_c").state == "reserved"

    # Registering commits the run's slot: used goes up, reserved down.
    model = register(service, "run_a")
    quota = client.registry.GetQuota(registry_pb2.GetQuotaRequest())
    assert (quota.used, quota.reserved, quota.available) == (1, 1, 0)
    assert (model.version, model.metrics["eval_loss"]) == (1, 1.25)
    assert service.ReleaseQuota(registry_pb2.ReleaseQuotaRequest(run_id="run_a")).state == "committed"
    assert [m.id for m in client.registry.ListModels(registry_pb2.ListModelsRequest()).models] == [model.id]

    # Deleting the model frees its slot.
    client.registry.DeleteModel(registry_pb2.DeleteModelRequest(id=model.id))
    quota = client.registry.GetQuota(registry_pb2.GetQuotaRequest())
    assert (quota.used, quota.reserved, quota.available) == (0, 1, 1)
    with pytest.raises(grpc.RpcError) as err:
        client.registry.GetModel(registry_pb2.GetModelRequest(id=model.id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_another_tenants_model_is_not_found(services, make_tenant, client_for, service_registry_for):
    owner_tenant, other_tenant = make_tenant(), make_tenant()
    owner, other = client_for(owner_tenant), client_for(other_tenant)
    owner_service, other_service = service_registry_for(owner_tenant), service_registry_for(other_tenant)
    owner_service.ReserveQuota(registry_pb2.ReserveQuotaRequest(run_id="run_owned"))
    model = register(owner_service, "run_owned")
    for call in (
        lambda: other.registry.GetModel(registry_pb2.GetModelRequest(id=model.id)),
        lambda: other.registry.DeleteModel(registry_pb2.DeleteModelRequest(id=model.id)),
        lambda: other.registry.GetSnippet(registry_pb2.GetSnippetRequest(model_id=model.id)),
        # The service acting for another tenant cannot touch the owner's run either.
        lambda: other_service.ReserveQuota(registry_pb2.ReserveQuotaRequest(run_id="run_owned")),
        lambda: other_service.ReleaseQuota(registry_pb2.ReleaseQuotaRequest(run_id="run_owned")),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert owner.registry.GetModel(registry_pb2.GetModelRequest(id=model.id)).name == "support-bot"
    snippets = owner.registry.GetSnippet(registry_pb2.GetSnippetRequest(model_id=model.id)).snippets
    assert model.id in snippets["grpcurl"] and model.id in snippets["python"]


def test_tenant_administration_needs_the_admin_token(services, make_tenant, client_for):
    tenant = make_tenant()
    client = client_for(tenant)
    with pytest.raises(grpc.RpcError) as err:
        client.registry.CreateTenant(registry_pb2.CreateTenantRequest(name="sneaky"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A tenant's own key can make another key for itself, never for someone else.
    second = client.registry.CreateApiKey(registry_pb2.CreateApiKeyRequest(name="ci"))
    assert second.key.tenant_id == tenant.tenant_id and second.secret.startswith("dk_")
    with pytest.raises(grpc.RpcError) as err:
        client.registry.CreateApiKey(registry_pb2.CreateApiKeyRequest(tenant_id=make_tenant().tenant_id))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = [("authorization", f"Bearer {services.admin_token}")]
    with grpc.insecure_channel(services.address("registry")) as channel, pytest.raises(grpc.RpcError) as err:
        registry_pb2_grpc.RegistryServiceStub(channel).CreateTenant(
            registry_pb2.CreateTenantRequest(name="Bad Name!"), metadata=admin, timeout=5
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tenant name" in err.value.details()


def test_only_the_services_reserve_release_and_register(services, make_tenant, client_for, service_registry_for):
    tenant = make_tenant()
    client, service = client_for(tenant), service_registry_for(tenant)
    service.ReserveQuota(registry_pb2.ReserveQuotaRequest(run_id="run_mine"))
    reserve = registry_pb2.ReserveQuotaRequest(run_id="run_other")
    release = registry_pb2.ReleaseQuotaRequest(run_id="run_mine")
    model = registry_pb2.RegisterModelRequest(
        run_id="run_mine", name="sneaky", path=3, base_model="tiny-llama",
        artifact_kind=registry_pb2.ARTIFACT_KIND_LORA_ADAPTER, artifact_uri="tenants/x/models/run_mine",
    )  # fmt: skip
    calls = (("ReserveQuota", reserve), ("ReleaseQuota", release), ("RegisterModel", model))

    # A tenant's own key may not free the slot of its running run, reserve one, or register a model.
    for method, request in calls:
        with pytest.raises(grpc.RpcError) as err:
            getattr(client.registry, method)(request)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
        assert "trainer service" in err.value.details(), method
    assert "distillery runs create" in err.value.details()
    quota = client.registry.GetQuota(registry_pb2.GetQuotaRequest())  # still open to tenants
    assert (quota.used, quota.reserved) == (0, 1)
    assert list(client.registry.ListModels(registry_pb2.ListModelsRequest()).models) == []

    # The service token must name its tenant, and a token that only looks like one is refused.
    with grpc.insecure_channel(services.address("registry")) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        for metadata in (
            [("authorization", f"Bearer {services.service_token}")],
            auth.service_metadata(tokens.new_service_token(), tenant.tenant_id),
        ):
            for method, request in calls:
                with pytest.raises(grpc.RpcError) as err:
                    getattr(stub, method)(request, metadata=metadata, timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (method, metadata[-1][0])
    quota = client.registry.GetQuota(registry_pb2.GetQuotaRequest())
    assert (quota.used, quota.reserved) == (0, 1)

    # The service token with the tenant is what the trainer sends.
    assert service.ReleaseQuota(release).state == "released"
