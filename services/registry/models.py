"""Registered models: private to their tenant, each one slot of the allowance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.paging import newest_first
from services.registry import quotas
from services.registry.tenants import new_id

READY, DEPLOYED = "ready", "deployed"
_STATE = (
    f"CASE WHEN EXISTS (SELECT 1 FROM deployments d WHERE d.model_id = models.id) THEN '{DEPLOYED}' ELSE '{READY}' END"
)


@dataclass(frozen=True)
class Model:
    id: str
    tenant_id: str
    name: str
    path: int
    base_model: str
    run_id: str
    version: int
    artifact_kind: int
    artifact_uri: str
    created_at: datetime
    metrics: dict[str, float] = field(default_factory=dict)
    training_config: dict[str, Any] = field(default_factory=dict)
    tools_json: list[str] = field(default_factory=list)  # a tool model's tools, in training order
    state: str = READY  # READY, or DEPLOYED while a deployment serves it


@dataclass(frozen=True)
class NewModel:
    run_id: str
    name: str
    path: int
    base_model: str
    artifact_kind: int
    artifact_uri: str
    metrics: dict[str, float]
    training_config: dict[str, Any]
    tools_json: list[str] = field(default_factory=list)


async def register(pool: AsyncConnectionPool, tenant_id: str, new: NewModel) -> Model:
    """Add a model and commit its run's reservation (or take a free slot if it had none).

    Idempotent per run: registering again for a run that has a model returns that model."""
    for name in ("run_id", "base_model", "artifact_uri"):
        if not getattr(new, name):
            raise InvalidArgument(f"{name} is required to register a model", field=name)
    check_tools_json(new.tools_json)
    name = new.name or new.run_id
    async with pool.connection() as conn, conn.transaction():
        quota = await quotas.quota_in(conn, tenant_id, lock=True)  # also serialises racing registrations
        rows = conn.cursor(row_factory=class_row(Model))
        await rows.execute(
            "SELECT * FROM models WHERE tenant_id = %s AND run_id = %s ORDER BY created_at, id LIMIT 1",
            (tenant_id, new.run_id),
        )
        existing = await rows.fetchone()
        if existing is not None:
            return existing
        cur = await conn.execute("SELECT tenant_id, state FROM reservations WHERE run_id = %s", (new.run_id,))
        reservation = await cur.fetchone()
        if reservation is not None and reservation[0] != tenant_id:
            raise NotFound(f"run {new.run_id} not found", field="run_id")
        if (reservation is None or reservation[1] != "reserved") and quota.available <= 0:
            raise quotas.full_error(quota)
        cur = await conn.execute(
            "SELECT coalesce(max(version), 0) + 1 FROM models WHERE tenant_id = %s AND name = %s", (tenant_id, name)
        )
        version_row = await cur.fetchone()
        assert version_row is not None
        await conn.execute(
            "INSERT INTO reservations (run_id, tenant_id, state) VALUES (%s, %s, 'committed')"
            " ON CONFLICT (run_id) DO UPDATE SET state = 'committed', updated_at = now()",
            (new.run_id, tenant_id),
        )
        await rows.execute(
            "INSERT INTO models (id, tenant_id, name, path, base_model, run_id, version, artifact_kind,"
            " artifact_uri, metrics, training_config, tools_json)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
            (new_id("mdl"), tenant_id, name, new.path, new.base_model, new.run_id, version_row[0],
             new.artifact_kind, new.artifact_uri, Jsonb(new.metrics), Jsonb(new.training_config), new.tools_json),
        )  # fmt: skip
        model = await rows.fetchone()
    assert model is not None
    return model


def check_tools_json(texts: list[str]) -> None:
    """Each tool is JSON text of an object with a name (a canonical tool); else InvalidArgument naming it."""
    for i, text in enumerate(texts):
        try:
            tool = json.loads(text)
        except ValueError as err:
            raise InvalidArgument(f"tools_json[{i}] is not JSON ({err}): give each tool as JSON text",
                                  field=f"tools_json[{i}]") from None  # fmt: skip
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise InvalidArgument(f"tools_json[{i}] is not a tool: give an object with name, description and "
                                  "parameters", field=f"tools_json[{i}]")  # fmt: skip


async def get(pool: AsyncConnectionPool, tenant_id: str, model_id: str) -> Model:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Model))
        await cur.execute(
            f"SELECT *, {_STATE} AS state FROM models WHERE id = %s AND tenant_id = %s", (model_id, tenant_id)
        )
        model = await cur.fetchone()
    if model is None:
        raise NotFound(f"model {model_id} not found")
    return model


async def list_page(pool: AsyncConnectionPool, tenant_id: str, size: int, after: str) -> tuple[list[Model], str]:
    found, next_token = await newest_first(pool, Model, "models", tenant_id, size, after)
    if not found:
        return found, next_token
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT model_id FROM deployments WHERE tenant_id = %s AND model_id = ANY(%s)",
            (tenant_id, [m.id for m in found]),
        )
        deployed = {row[0] for row in await cur.fetchall()}
    return [replace(m, state=DEPLOYED if m.id in deployed else READY) for m in found], next_token


async def delete(pool: AsyncConnectionPool, tenant_id: str, model_id: str, force: bool = False) -> Model:
    """Remove the model's row (freeing its slot); the caller removes its artifacts. A deployed model is refused
    unless ``force``, which undeploys it first."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "SELECT engine FROM deployments WHERE model_id = %s AND tenant_id = %s FOR UPDATE", (model_id, tenant_id)
        )
        if await cur.fetchone() is not None:
            if not force:
                raise FailedPrecondition(
                    f"model {model_id} is deployed: undeploy it first (`distillery models undeploy {model_id}`), "
                    "or delete with --force, which undeploys it",
                    field="id",
                )
            await conn.execute("DELETE FROM deployments WHERE model_id = %s AND tenant_id = %s", (model_id, tenant_id))
        # Its optimization profiles go with it (profiles.py).
        await conn.execute("DELETE FROM profiles WHERE model_id = %s AND tenant_id = %s", (model_id, tenant_id))
        rows = conn.cursor(row_factory=class_row(Model))
        await rows.execute("DELETE FROM models WHERE id = %s AND tenant_id = %s RETURNING *", (model_id, tenant_id))
        model = await rows.fetchone()
    if model is None:
        raise NotFound(f"model {model_id} not found")
    return model
