"""distillery models deploy / undeploy, and distillery deployments list: what the OpenAI-compatible endpoint serves.

A deployment is served by an engine: "local" (the registry's transformers engine, one replica; it keeps at most
DISTILLERY_MAX_LOADED_MODELS models in memory, default 2) or "vllm" (a cluster's vLLM pool: a LoRA adapter joins it
by name, a full fine-tune gets a dedicated upstream). Ask a deployed model at its endpoint with the openai SDK
(`distillery models snippet MODEL`).
"""

from __future__ import annotations

import click

from distillery.cli.output import as_dict, console, fail, json_option, print_json, print_table, rpc_errors
from distillery.client import Client
from distillery.registry.v1 import registry_pb2

ENGINES = ("local", "vllm")
# Deploying the local engine loads the model: minutes for a large one.
DEPLOY_TIMEOUT_S = 900


def describe(d: registry_pb2.Deployment) -> str:
    where = f" at {d.endpoint}" if d.endpoint else ""
    return f"{d.model_id} ({d.model_name}): {d.state}, engine {d.engine}, {d.replicas} replica(s){where}"


@click.command("deploy")
@click.argument("model_id")
@click.option("--replicas", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Replicas to serve it (the local engine serves one).")  # fmt: skip
@click.option("--engine", type=click.Choice(ENGINES), default=None,
              help="local (the registry's engine) or vllm (a cluster's vLLM pool); default: vllm where the "
                   "registry has one, else local.")  # fmt: skip
@json_option
def deploy(model_id: str, replicas: int, engine: str | None, as_json: bool) -> None:
    """Deploy a model behind the OpenAI-compatible endpoint (again: change its replicas or engine)."""
    with rpc_errors():
        found = Client.from_environment(timeout=DEPLOY_TIMEOUT_S).registry.DeployModel(
            registry_pb2.DeployModelRequest(model_id=model_id, replicas=replicas, engine=engine or "")
        )
    if as_json:
        print_json(found)
    else:
        console.print(describe(found), highlight=False)
    if found.state == "failed":
        fail(f"the deployment failed: {found.error}",
             hint=f"fix it and deploy again, or `distillery models undeploy {model_id}`")  # fmt: skip
    if not as_json and found.endpoint:
        console.print(f"[dim]ask it as model {found.model_id!r}: distillery models snippet {found.model_id}[/dim]")


@click.command("undeploy")
@click.argument("model_id")
def undeploy(model_id: str) -> None:
    """Stop serving a model (it stays registered)."""
    with rpc_errors():
        Client.from_environment().registry.UndeployModel(registry_pb2.UndeployModelRequest(model_id=model_id))
    console.print(f"undeployed {model_id}", highlight=False)


@click.group("deployments")
def group() -> None:
    """What the OpenAI-compatible endpoint serves (`models deploy` / `models undeploy` change it)."""


@group.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List your deployments."""
    with rpc_errors():
        reply = Client.from_environment().registry.ListDeployments(registry_pb2.ListDeploymentsRequest())
    if as_json:
        print_json([as_dict(d) for d in reply.deployments])
        return
    rows = [
        (d.model_id, d.model_name, d.state + (f": {d.error}" if d.error else ""), d.engine, d.replicas, d.endpoint)
        for d in reply.deployments
    ]
    print_table("Deployments", ["model", "name", "state", "engine", "replicas", "endpoint"], rows, whole=["model"])
