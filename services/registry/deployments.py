"""Deployments: what the gateway's OpenAI-compatible endpoint serves, one per model at most.

A deployment names the engine behind it, one interface (``Engine``) with two implementations:

- ``local``: the registry's own transformers engine (``generate.Generator``), one replica. Deploying loads
  the model (an adapter merged into its base) so its first request is warm; the gateway asks it through
  Generate and GenerateStream. Memory stays bounded: the engine keeps at most ``max_loaded_models`` models
  loaded (DISTILLERY_MAX_LOADED_MODELS, default 2), the least recently used leaving first; a deployment whose
  model left memory stays "ready" and is loaded again by its next request.
- ``vllm``: the cluster's vLLM, an OpenAI-compatible upstream the gateway routes to. A LoRA adapter joins the
  shared multi-LoRA pool (DISTILLERY_VLLM_URL) under its model id as the adapter's name (the gateway loads it
  there by that name, from the model's artifact_uri, on first use: vLLM's dynamic LoRA API); a full fine-tune
  needs a dedicated upstream of its own (DISTILLERY_VLLM_DEDICATED_URL, a URL template with ``{model_id}``).

Deploying again is idempotent (it changes the replicas, or the engine). A deployed model's ``state`` is
"deployed"; deleting it is refused unless forced (``models.delete``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from distillery.registry.v1 import registry_pb2
from services.common.errors import DistilleryError, FailedPrecondition, InvalidArgument, NotFound
from services.registry import models
from services.registry.generate import Generator
from services.registry.models import Model

log = logging.getLogger(__name__)

LOCAL, VLLM = "local", "vllm"
ENGINES = (LOCAL, VLLM)
MAX_REPLICAS = 64
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class Deployment:
    model_id: str
    tenant_id: str
    engine: str
    replicas: int
    state: str  # "loading", "ready" or "failed"
    upstream: str
    adapter_name: str
    error: str
    created_at: datetime
    updated_at: datetime
    # From the model.
    model_name: str = ""
    artifact_uri: str = ""
    artifact_kind: int = 0


@dataclass(frozen=True)
class Placement:
    """Where an engine serves a model: its upstream and adapter name (vllm), nothing for local."""

    upstream: str = ""
    adapter_name: str = ""


class Engine(Protocol):
    name: str

    def place(self, model: Model, replicas: int) -> Placement:
        """Where the model will be served; refuses what this engine cannot serve (nothing is written yet)."""

    async def start(self, model: Model) -> str:
        """Make the model answer; returns "" when it does, else why not (the deployment is then "failed")."""


class LocalEngine:
    """The registry's transformers engine: one replica, loaded in this process."""

    name = LOCAL

    def __init__(self, generator: Generator) -> None:
        self.generator = generator

    def place(self, model: Model, replicas: int) -> Placement:
        if replicas > 1:
            raise InvalidArgument(
                f"the local engine serves one replica, not {replicas}: deploy with --replicas 1, or in a cluster "
                "with the vllm engine (--engine vllm), which serves more",
                field="replicas",
            )
        return Placement()

    async def start(self, model: Model) -> str:
        try:
            await self.generator.warm(model)
        except DistilleryError as err:
            return err.message[:MAX_ERROR_CHARS]
        except Exception as err:  # a model that does not load is a failed deployment, not a failed call
            log.exception("model %s did not load", model.id)
            return f"the model did not load: {type(err).__name__}: {err}"[:MAX_ERROR_CHARS]
        return ""


class VllmEngine:
    """The cluster's vLLM: adapters by name in a shared multi-LoRA pool, full fine-tunes on dedicated upstreams."""

    name = VLLM

    def __init__(self, url: str, dedicated_url: str) -> None:
        self.url = url
        self.dedicated_url = dedicated_url

    def place(self, model: Model, replicas: int) -> Placement:
        if not self.url:
            raise FailedPrecondition(
                "the vllm engine is not configured on this registry (DISTILLERY_VLLM_URL, the vLLM pool's "
                "OpenAI-compatible URL): deploy with the local engine (--engine local), or set it",
                field="engine",
            )
        if is_adapter(model):
            # The pool serves the adapter under this name (the gateway loads it by name on first use).
            return Placement(upstream=self.url, adapter_name=model.id)
        if "{model_id}" not in self.dedicated_url:
            raise FailedPrecondition(
                f"model {model.id} is a full fine-tune: vLLM serves it on a dedicated upstream, and none is "
                "configured (DISTILLERY_VLLM_DEDICATED_URL, a URL template with {model_id}); deploy it with the "
                "local engine (--engine local), or set it",
                field="engine",
            )
        return Placement(upstream=self.dedicated_url.replace("{model_id}", model.id).rstrip("/"))

    async def start(self, model: Model) -> str:
        return ""  # the upstream loads what it serves; the gateway maps its errors when it does not answer


def is_adapter(model: Model) -> bool:
    return model.artifact_kind == registry_pb2.ARTIFACT_KIND_LORA_ADAPTER


_SELECT = (
    "SELECT d.*, m.name AS model_name, m.artifact_uri, m.artifact_kind FROM deployments d"
    " JOIN models m ON m.id = d.model_id"
)


class Deployments:
    """Deploys a tenant's models on the engines."""

    def __init__(
        self, pool: AsyncConnectionPool, generator: Generator, vllm_url: str = "", vllm_dedicated_url: str = ""
    ):
        self.pool = pool
        self.engines: dict[str, Engine] = {
            LOCAL: LocalEngine(generator),
            VLLM: VllmEngine(vllm_url, vllm_dedicated_url),
        }
        self.default_engine = VLLM if vllm_url else LOCAL

    async def deploy(self, tenant_id: str, model_id: str, replicas: int = 0, engine: str = "") -> Deployment:
        """Deploy (or deploy again, with these replicas and engine); returns it "ready" or "failed"."""
        name = engine or self.default_engine
        if name not in self.engines:
            raise InvalidArgument(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}", field="engine")
        replicas = replicas or 1
        if not 1 <= replicas <= MAX_REPLICAS:
            raise InvalidArgument(f"replicas is {replicas}: use 1 to {MAX_REPLICAS}", field="replicas")
        model = await models.get(self.pool, tenant_id, model_id)
        chosen = self.engines[name]
        placement = chosen.place(model, replicas)
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO deployments (model_id, tenant_id, engine, replicas, state, upstream, adapter_name)"
                " VALUES (%s, %s, %s, %s, 'loading', %s, %s) ON CONFLICT (model_id) DO UPDATE SET"
                " engine = excluded.engine, replicas = excluded.replicas, state = 'loading',"
                " upstream = excluded.upstream, adapter_name = excluded.adapter_name, error = '', updated_at = now()",
                (model.id, tenant_id, name, replicas, placement.upstream, placement.adapter_name),
            )
        error = await chosen.start(model)
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE deployments SET state = %s, error = %s, updated_at = now()"
                " WHERE model_id = %s AND tenant_id = %s AND engine = %s",
                ("failed" if error else "ready", error, model.id, tenant_id, name),
            )
        return await self.get(tenant_id, model.id)

    async def undeploy(self, tenant_id: str, model_id: str) -> Deployment:
        """Stop serving the model; returns the deployment as it was. NOT_FOUND when it is not deployed."""
        found = await self.get(tenant_id, model_id)
        async with self.pool.connection() as conn:
            await conn.execute("DELETE FROM deployments WHERE model_id = %s AND tenant_id = %s", (model_id, tenant_id))
        return found

    async def get(self, tenant_id: str, model_id: str) -> Deployment:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Deployment))
            await cur.execute(_SELECT + " WHERE d.model_id = %s AND d.tenant_id = %s", (model_id, tenant_id))
            found = await cur.fetchone()
        if found is None:
            await models.get(self.pool, tenant_id, model_id)  # NOT_FOUND for a model that is not there
            raise NotFound(
                f"model {model_id} is not deployed: deploy it with `distillery models deploy {model_id}`",
                field="model_id",
            )
        return found

    async def list(self, tenant_id: str) -> list[Deployment]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Deployment))
            await cur.execute(_SELECT + " WHERE d.tenant_id = %s ORDER BY d.created_at, d.model_id", (tenant_id,))
            return await cur.fetchall()
