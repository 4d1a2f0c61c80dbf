"""Tiers and allowances: an operator moves a tenant (SetTenantTier, admin token; `distillery admin tenants
set-tier`); the quota follows at once; an allowance below the models held keeps them all and refuses new runs
until the count is under it."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import grpc
from click.testing import CliRunner
from rpc_refusals import raised
from test_tracing_and_cli import cli_env
from trained_models import LORA, register

from distillery.cli.main import cli
from distillery.registry.v1 import registry_pb2, registry_pb2_grpc

PRO, STANDARD = registry_pb2.TIER_PRO, registry_pb2.TIER_STANDARD


def admin_registry(services):
    channel = grpc.insecure_channel(services.address("registry"))
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    metadata = [("authorization", f"Bearer {services.admin_token}")]

    def set_tier(tenant_id: str, tier: int, allowance: int = 0) -> registry_pb2.Tenant:
        request = registry_pb2.SetTenantTierRequest(tenant_id=tenant_id, tier=tier, model_allowance=allowance)
        return stub.SetTenantTier(request, metadata=metadata, timeout=10)

    return channel, set_tier


def registered(services, service, tenant_id: str) -> registry_pb2.Model:
    run_id = f"run_{secrets.token_hex(6)}"
    return register(service, run_id, LORA, f"s3://{services.s3.bucket}/tenants/{tenant_id}/runs/{run_id}/model/", "b")


def test_the_quota_follows_the_tier_and_a_lower_allowance_keeps_the_models_but_refuses_runs(
    services, make_tenant, client_for, service_registry_for
):
    tenant = make_tenant()
    client, service = client_for(tenant), service_registry_for(tenant)
    quota = lambda: client.registry.GetQuota(registry_pb2.GetQuotaRequest())  # noqa: E731
    reserve = lambda: service.ReserveQuota(registry_pb2.ReserveQuotaRequest(run_id=f"run_{secrets.token_hex(6)}"))  # noqa: E731
    channel, set_tier = admin_registry(services)
    with channel:
        assert (quota().tier, quota().allowance) == (STANDARD, 3)
        moved = set_tier(tenant.tenant_id, PRO)
        assert (moved.tier, moved.model_allowance) == (PRO, 50)
        assert (quota().tier, quota().allowance, quota().available) == (PRO, 50, 50)
        assert set_tier(tenant.tenant_id, PRO, 7).model_allowance == 7 and quota().allowance == 7
        held = [registered(services, service, tenant.tenant_id) for _ in range(3)]

        # Down to one: the three models stay, new runs are refused, naming what to do.
        set_tier(tenant.tenant_id, STANDARD, 1)
        now = quota()
        assert (now.tier, now.allowance, now.used, now.available) == (STANDARD, 1, 3, 0)
        assert len(client.registry.ListModels(registry_pb2.ListModelsRequest()).models) == 3
        err = raised(reserve)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over the allowance of 1" in err.details() and "delete 3" in err.details()
        assert "distillery models delete" in err.details()
        for model in held[:2]:
            client.registry.DeleteModel(registry_pb2.DeleteModelRequest(id=model.id))
        assert raised(reserve).code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # one model: not under 1 yet
        client.registry.DeleteModel(registry_pb2.DeleteModelRequest(id=held[2].id))
        assert reserve().state == "reserved"

        # Back to the tier's default.
        assert set_tier(tenant.tenant_id, STANDARD).model_allowance == 3

        err = raised(lambda: set_tier("ten_nosuchtenant", PRO))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        err = raised(lambda: set_tier(tenant.tenant_id, registry_pb2.TIER_UNSPECIFIED))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "standard, starter or pro" in err.details()
    # A tenant's own key may not change its tier.
    err = raised(lambda: client.registry.SetTenantTier(
        registry_pb2.SetTenantTierRequest(tenant_id=tenant.tenant_id, tier=PRO)))  # fmt: skip
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "admin token" in err.details()


def test_the_cli_sets_a_tier_with_the_admin_token(services, make_tenant, client_for, tmp_path: Path):
    tenant = make_tenant()
    env = cli_env(services, None)
    said = CliRunner().invoke(cli, ["admin", "tenants", "set-tier", tenant.tenant_id, "pro", "--allowance", "12"],
                              env={**env, "DISTILLERY_ADMIN_TOKEN": services.admin_token})  # fmt: skip
    assert said.exit_code == 0 and "tier pro, allowance 12" in said.output, said.output
    assert services.admin_token not in said.output
    quota = client_for(tenant).registry.GetQuota(registry_pb2.GetQuotaRequest())
    assert (quota.tier, quota.allowance) == (PRO, 12)

    # The local stack's token, from stack.json, when the environment names none.
    (tmp_path / "stack.json").write_text(json.dumps({"secrets": {"admin_token": services.admin_token}}))
    said = CliRunner().invoke(cli, ["admin", "tenants", "set-tier", tenant.tenant_id, "starter", "--json"],
                              env={**env, "DISTILLERY_HOME": str(tmp_path), "DISTILLERY_ADMIN_TOKEN": ""})  # fmt: skip
    assert said.exit_code == 0 and json.loads(said.output)["model_allowance"] == 10, said.output

    said = CliRunner().invoke(cli, ["admin", "tenants", "set-tier", tenant.tenant_id, "pro"],
                              env={**env, "DISTILLERY_ADMIN_TOKEN": ""})  # fmt: skip
    assert said.exit_code == 1 and "DISTILLERY_ADMIN_TOKEN" in said.output, said.output
    said = CliRunner().invoke(cli, ["admin", "tenants", "set-tier", tenant.tenant_id, "pro"],
                              env={**env, "DISTILLERY_ADMIN_TOKEN": "not-the-token"})  # fmt: skip
    assert said.exit_code == 1 and "unauthenticated" in said.output, said.output
