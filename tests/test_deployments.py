"""Deployments: deploy, list, get, undeploy over the registry's RPCs and the CLI; a deployed model's state;
deletion refused while deployed unless forced; the engines' refusals; the vllm engine's placement (adapter name
and upstream), with the domain module on the registry's real database where a registry without a vLLM URL is
needed.

The models are the tiny trained Llamas of tests/trained_models.py (a LoRA adapter and a full fine-tune).
"""

from __future__ import annotations

import secrets

import grpc
import pytest
import test_generate
from click.testing import CliRunner
from rpc_refusals import raised
from test_tracing_and_cli import cli_env
from trained_models import FULL, GENERATE_TIMEOUT_S, LORA, register, trained_model, upload

from distillery.cli.main import cli
from distillery.registry.v1 import registry_pb2
from services.common import db
from services.common.errors import FailedPrecondition, InvalidArgument
from services.registry.deployments import Deployments
from services.registry.generate import Generator

artifacts = test_generate.artifacts  # the fixture: tiny trained models, as test_generate makes them


def deploy(client, model_id: str, **options) -> registry_pb2.Deployment:
    return client.registry.DeployModel(
        registry_pb2.DeployModelRequest(model_id=model_id, **options), timeout=GENERATE_TIMEOUT_S
    )


def test_deploy_list_get_undeploy_and_the_models_state(
    services, make_tenant, client_for, service_registry_for, artifacts
):
    tenant = make_tenant()
    client = client_for(tenant)
    model = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, LORA)
    assert model.state == "ready"

    deployed = deploy(client, model.id, engine="local")
    assert (deployed.model_id, deployed.model_name, deployed.state, deployed.engine, deployed.replicas) == (
        model.id, "colours", "ready", "local", 1,
    )  # fmt: skip
    assert (deployed.upstream, deployed.adapter_name, deployed.error) == ("", "", "")
    assert deployed.artifact_uri == model.artifact_uri and deployed.artifact_kind == LORA
    assert deployed.endpoint == (f"{services.gateway_url}/v1" if getattr(services, "gateway_url", "") else "")
    got = client.registry.GetDeployment(registry_pb2.GetDeploymentRequest(model_id=model.id))
    assert got == deployed
    listed = client.registry.ListDeployments(registry_pb2.ListDeploymentsRequest()).deployments
    assert list(listed) == [deployed]
    assert client.registry.GetModel(registry_pb2.GetModelRequest(id=model.id)).state == "deployed"
    (shown,) = client.registry.ListModels(registry_pb2.ListModelsRequest()).models
    assert shown.state == "deployed"

    # Deploying again is idempotent: one deployment, still ready.
    again = deploy(client, model.id, engine="local", replicas=1)
    assert again.state == "ready" and again.created_at == deployed.created_at
    assert len(client.registry.ListDeployments(registry_pb2.ListDeploymentsRequest()).deployments) == 1

    # The local engine serves one replica.
    err = raised(lambda: deploy(client, model.id, engine="local", replicas=2))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "local engine serves one replica" in err.details() and "vllm" in err.details()
    err = raised(lambda: deploy(client, model.id, engine="tgi"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "local or vllm" in err.details()

    # Deleting a deployed model is refused, naming what to do.
    err = raised(lambda: client.registry.DeleteModel(registry_pb2.DeleteModelRequest(id=model.id)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"distillery models undeploy {model.id}" in err.details() and "--force" in err.details()

    gone = client.registry.UndeployModel(registry_pb2.UndeployModelRequest(model_id=model.id))
    assert gone.model_id == model.id
    err = raised(lambda: client.registry.GetDeployment(registry_pb2.GetDeploymentRequest(model_id=model.id)))
    assert err.code() == grpc.StatusCode.NOT_FOUND and f"distillery models deploy {model.id}" in err.details()
    assert client.registry.GetModel(registry_pb2.GetModelRequest(id=model.id)).state == "ready"
    assert not client.registry.ListDeployments(registry_pb2.ListDeploymentsRequest()).deployments

    # Forced, a deployed model is undeployed, then deleted.
    deploy(client, model.id, engine="local")
    client.registry.DeleteModel(registry_pb2.DeleteModelRequest(id=model.id, force=True))
    assert not client.registry.ListDeployments(registry_pb2.ListDeploymentsRequest()).deployments
    err = raised(lambda: client.registry.GetModel(registry_pb2.GetModelRequest(id=model.id)))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_another_tenants_model_is_not_found(services, make_tenant, client_for, service_registry_for, artifacts):
    owner, other = make_tenant(), make_tenant()
    model = trained_model(services, service_registry_for(owner), owner.tenant_id, artifacts, FULL)
    deploy(client_for(owner), model.id, engine="local")
    stranger = client_for(other).registry
    for call in (
        lambda: deploy(client_for(other), model.id, engine="local"),
        lambda: stranger.GetDeployment(registry_pb2.GetDeploymentRequest(model_id=model.id)),
        lambda: stranger.UndeployModel(registry_pb2.UndeployModelRequest(model_id=model.id)),
    ):
        assert raised(call).code() == grpc.StatusCode.NOT_FOUND
    assert not stranger.ListDeployments(registry_pb2.ListDeploymentsRequest()).deployments
    assert client_for(owner).registry.GetDeployment(registry_pb2.GetDeploymentRequest(model_id=model.id)).state == (
        "ready"
    )


def test_a_model_that_does_not_load_is_a_failed_deployment(
    services, make_tenant, client_for, service_registry_for, artifacts
):
    tenant = make_tenant()
    run_id = f"run_{secrets.token_hex(6)}"
    uri = upload(services, artifacts["lora"], f"tenants/{tenant.tenant_id}/runs/{run_id}/model/")
    model = register(service_registry_for(tenant), run_id, LORA, uri, "/nonexistent/base-model")
    failed = deploy(client_for(tenant), model.id, engine="local")
    assert failed.state == "failed" and "/nonexistent/base-model" in failed.error


def test_the_cli_deploys_lists_and_undeploys(services, make_tenant, service_registry_for, artifacts):
    tenant = make_tenant()
    model = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, LORA)
    env = cli_env(services, tenant.api_key)
    said = CliRunner().invoke(cli, ["models", "deploy", model.id, "--engine", "local"], env=env)
    assert said.exit_code == 0 and "ready" in said.output, said.output
    said = CliRunner().invoke(cli, ["deployments", "list"], env=env)
    assert said.exit_code == 0 and model.id in said.output and "local" in said.output, said.output
    said = CliRunner().invoke(cli, ["models", "list"], env=env)
    assert said.exit_code == 0 and "deployed" in said.output and "colours" in said.output, said.output
    said = CliRunner().invoke(cli, ["models", "deploy", model.id, "--engine", "local", "--replicas", "3"], env=env)
    assert said.exit_code == 1 and "one replica" in said.output, said.output
    said = CliRunner().invoke(cli, ["models", "delete", model.id, "--yes"], env=env)
    assert said.exit_code == 1 and "--force" in said.output, said.output
    said = CliRunner().invoke(cli, ["models", "undeploy", model.id], env=env)
    assert said.exit_code == 0 and f"undeployed {model.id}" in said.output, said.output
    deploy_again = CliRunner().invoke(cli, ["models", "deploy", model.id, "--engine", "local"], env=env)
    assert deploy_again.exit_code == 0, deploy_again.output
    said = CliRunner().invoke(cli, ["models", "delete", model.id, "--yes", "--force"], env=env)
    assert said.exit_code == 0 and f"deleted {model.id}" in said.output, said.output


@pytest.fixture
def registry_pool(services):
    pool = services.loop.run(db.open_pool(services.postgres_url, "registry", max_size=2))
    yield pool
    services.loop.run(pool.close())


def test_the_vllm_engine_places_adapters_in_the_pool_and_full_weights_on_a_dedicated_upstream(
    services, make_tenant, service_registry_for, artifacts, registry_pool, tmp_path
):
    tenant = make_tenant()
    lora = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, LORA)
    full = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, FULL)
    generator = Generator(None, tmp_path)  # type: ignore[arg-type]  # the vllm engine loads nothing here
    run = services.loop.run

    without = Deployments(registry_pool, generator)
    with pytest.raises(FailedPrecondition, match="DISTILLERY_VLLM_URL"):
        run(without.deploy(tenant.tenant_id, lora.id, engine="vllm"))
    assert without.default_engine == "local"

    pool = Deployments(registry_pool, generator, vllm_url="http://vllm.test:8000")
    assert pool.default_engine == "vllm"
    placed = run(pool.deploy(tenant.tenant_id, lora.id, replicas=3))
    assert (placed.engine, placed.state, placed.replicas) == ("vllm", "ready", 3)
    assert (placed.upstream, placed.adapter_name) == ("http://vllm.test:8000", lora.id)
    with pytest.raises(FailedPrecondition, match="dedicated upstream"):
        run(pool.deploy(tenant.tenant_id, full.id))
    with pytest.raises(InvalidArgument, match="replicas"):
        run(pool.deploy(tenant.tenant_id, lora.id, replicas=1000))

    dedicated = Deployments(
        registry_pool, generator, vllm_url="http://vllm.test:8000", vllm_dedicated_url="http://vllm-{model_id}.test/"
    )
    placed = run(dedicated.deploy(tenant.tenant_id, full.id, replicas=2))
    assert (placed.upstream, placed.adapter_name) == (f"http://vllm-{full.id}.test", "")
    assert [d.model_id for d in run(dedicated.list(tenant.tenant_id))] == [lora.id, full.id]
    run(dedicated.undeploy(tenant.tenant_id, lora.id))
    run(dedicated.undeploy(tenant.tenant_id, full.id))
