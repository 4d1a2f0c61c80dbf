"""The tenant's active tool list in PostgreSQL: the tools a tool-calling run trains on.

- One tool per name: adding a tool named like an active one replaces it (the import
  is the newer definition); ``replace=True`` clears the list first. Each add is one
  transaction, serialised per tenant, so the list is never half-replaced.
- A tool's id is ``tool_`` + 24 hex digits of a sha256 over its definition (name,
  description, parameters, source): importing the same definition again keeps its
  id and ``created_at``; a changed definition gets a new id.
- Two tools of one add sharing a name is InvalidArgument (``tools.import_document``
  never gives such a list). Deleting an unknown id, or another tenant's, is NotFound.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from services.common.errors import InvalidArgument, NotFound
from services.ingest.tools import CanonicalTool


@dataclass(frozen=True)
class StoredTool:
    tenant_id: str
    id: str
    name: str
    description: str
    parameters: dict[str, Any]
    source: int
    created_at: datetime


def definition_id(tool: CanonicalTool) -> str:
    definition = json.dumps([tool.name, tool.description, tool.parameters, tool.source], sort_keys=True)
    return "tool_" + hashlib.sha256(definition.encode()).hexdigest()[:24]


async def add(
    pool: AsyncConnectionPool, tenant_id: str, tools: list[CanonicalTool], *, replace: bool
) -> list[StoredTool]:
    """Make ``tools`` active (in their order), replacing same-named ones, or the whole list with ``replace``."""
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InvalidArgument(f"tool names repeat: {', '.join(twice)}; give each tool its own name", field="tools")
    ids = [definition_id(t) for t in tools]
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tools:' || %s))", (tenant_id,))
        if replace:
            await conn.execute("DELETE FROM tools WHERE tenant_id = %s AND NOT (id = ANY(%s))", (tenant_id, ids))
        await conn.execute(
            "DELETE FROM tools WHERE tenant_id = %s AND name = ANY(%s) AND NOT (id = ANY(%s))",
            (tenant_id, names, ids),
        )
        cur = conn.cursor(row_factory=class_row(StoredTool))
        for tool, new_id in zip(tools, ids, strict=True):
            await cur.execute(
                "INSERT INTO tools (tenant_id, id, name, description, parameters, source)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id, id) DO NOTHING",
                (tenant_id, new_id, tool.name, tool.description, Jsonb(tool.parameters), tool.source),
            )
        await cur.execute("SELECT * FROM tools WHERE tenant_id = %s AND id = ANY(%s)", (tenant_id, ids))
        stored = {row.id: row for row in await cur.fetchall()}
    return [stored[i] for i in ids]


async def list_all(pool: AsyncConnectionPool, tenant_id: str) -> list[StoredTool]:
    """The active tools, by name."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(StoredTool))
        await cur.execute("SELECT * FROM tools WHERE tenant_id = %s ORDER BY name", (tenant_id,))
        return await cur.fetchall()


async def delete(pool: AsyncConnectionPool, tenant_id: str, tool_id: str) -> None:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "DELETE FROM tools WHERE tenant_id = %s AND id = %s RETURNING id", (tenant_id, tool_id)
        )
        if await cur.fetchone() is None:
            raise NotFound(f"tool {tool_id} not found; `distillery tools list` shows the active tools", field="id")
