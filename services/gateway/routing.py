"""Which engine answers a request's ``model``.

``model`` is a model id ("mdl_..."), a model name (its newest version), or "<provider>:<model>"
(proxy mode). A model is served only while it is deployed: the registry's GetDeployment says
where. A model that does not exist and another tenant's model look the same (404
model_not_found); one of the tenant's own that is not deployed is a 404 saying how to deploy it.
"""

from __future__ import annotations

from dataclasses import dataclass

from distillery.common.v1 import common_pb2
from distillery.registry.v1 import registry_pb2
from services.gateway.api_errors import ApiError, model_not_found
from services.gateway.engines import Engine, LocalEngine, ProxyEngine
from services.gateway.peers import Peers
from services.gateway.vllm import VllmEngine, VllmPool

PAGE_SIZE = 500


@dataclass
class Route:
    engine: Engine
    model: str  # what captured traffic records: the model id, or provider:model
    source: str  # "endpoint" or "proxy"
    path: int = 0  # the model's TrainingPath (0 when unknown)


async def resolve_model_id(peers: Peers, api_key: str, model: str) -> str:
    if model.startswith("mdl_"):
        return model
    newest: registry_pb2.Model | None = None
    token = ""
    while True:
        page = common_pb2.PageRequest(page_size=PAGE_SIZE, page_token=token)
        listed = await peers.registry("ListModels", registry_pb2.ListModelsRequest(page=page), api_key)
        for found in listed.models:
            if found.name == model and (newest is None or found.version > newest.version):
                newest = found
        token = listed.page.next_page_token
        if not token:
            break
    if newest is None:
        raise model_not_found(model)
    return newest.id


async def deployment_of(peers: Peers, api_key: str, model_id: str, asked: str) -> registry_pb2.Deployment:
    try:
        deployment: registry_pb2.Deployment = await peers.registry(
            "GetDeployment", registry_pb2.GetDeploymentRequest(model_id=model_id), api_key
        )
    except ApiError as err:
        if err.status != 404:
            raise
    else:
        if deployment.state == "failed":
            raise ApiError(503, f"the deployment of {model_id} failed: {deployment.error or 'see the registry log'}; "
                           f"deploy it again: `distillery models deploy {model_id}`", "server_error", None,
                           "deployment_failed")  # fmt: skip
        return deployment
    try:
        await peers.registry("GetModel", registry_pb2.GetModelRequest(id=model_id), api_key)
    except ApiError as err:
        if err.status == 404:
            raise model_not_found(asked) from None
        raise
    raise ApiError(404, f"model {model_id} is not deployed: `distillery models deploy {model_id}`",
                   "invalid_request_error", "model", "model_not_found")  # fmt: skip


async def route(peers: Peers, pool: VllmPool, api_key: str, model: str, proxy: bool) -> Route:
    if proxy:
        return Route(ProxyEngine(peers, api_key), model, "proxy")
    model_id = await resolve_model_id(peers, api_key, model)
    deployment = await deployment_of(peers, api_key, model_id, model)
    if deployment.engine == "vllm":
        return Route(VllmEngine(pool, deployment), model_id, "endpoint")
    return Route(LocalEngine(peers, model_id, api_key), model_id, "endpoint")
