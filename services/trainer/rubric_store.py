"""A tenant's rubrics, stored: named and versioned (``migrations/0005_rubrics.sql``).

``create`` stores a parsed ``Rubric`` (``rubric.py``) under its name as the next version of that name
(1, 2, ...), unless it is the same as the latest version, which is then returned as it is; ``get`` finds
one by id (``rub_...``) or by name (its latest version); ``list_page`` pages through them, newest first
(``services/common/paging.py``). Another tenant's rubric is NOT_FOUND, as one that does not exist.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from services.common.errors import NotFound
from services.common.ids import check_text
from services.common.paging import newest_first
from services.trainer.rubric import Rubric

ID_PREFIX = "rub_"
MAX_REF_CHARS = 128  # an id or a name (names have at most 64 characters)


@dataclass(frozen=True)
class StoredRubric:
    id: str
    tenant_id: str
    name: str
    version: int
    rubric: dict[str, Any]
    created_at: datetime

    def parsed(self) -> Rubric:
        """The rubric as the graders use it (the stored form reads back as it was created)."""
        return Rubric.from_dict(self.rubric)


def new_rubric_id() -> str:
    return f"{ID_PREFIX}{secrets.token_hex(10)}"


async def create(pool: AsyncConnectionPool, tenant_id: str, rubric: Rubric) -> tuple[StoredRubric, bool]:
    """``rubric`` stored as the next version of its name, and True; or the latest version, and False, when
    that one holds the same criteria and description already."""
    stored = rubric.to_dict()
    async with pool.connection() as conn, conn.transaction():
        # One creator of a tenant's name at a time: versions are handed out in order, none twice.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{tenant_id}\x1f{rubric.name}",))
        cur = conn.cursor(row_factory=class_row(StoredRubric))
        await cur.execute(
            "SELECT * FROM rubrics WHERE tenant_id = %s AND name = %s ORDER BY version DESC LIMIT 1",
            (tenant_id, rubric.name),
        )
        latest = await cur.fetchone()
        if latest is not None and latest.rubric == stored:
            return latest, False
        await cur.execute(
            "INSERT INTO rubrics (id, tenant_id, name, version, rubric) VALUES (%s, %s, %s, %s, %s) RETURNING *",
            (new_rubric_id(), tenant_id, rubric.name, (latest.version if latest else 0) + 1, Jsonb(stored)),
        )
        created = await cur.fetchone()
    assert created is not None
    return created, True


async def get(pool: AsyncConnectionPool, tenant_id: str, ref: str, field: str = "rubric") -> StoredRubric:
    """The tenant's rubric with id ``ref`` (``rub_...``), or the latest version of the one named ``ref``."""
    check_text(ref, field, MAX_REF_CHARS)
    if not ref.strip():
        raise NotFound(f"{field} is empty: give a rubric's id (rub_...) or name (`distillery rubrics list`)",
                       field=field)  # fmt: skip
    by_id = ref.startswith(ID_PREFIX)
    query = (
        "SELECT * FROM rubrics WHERE tenant_id = %s AND id = %s"
        if by_id
        else "SELECT * FROM rubrics WHERE tenant_id = %s AND name = %s ORDER BY version DESC LIMIT 1"
    )
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(StoredRubric))
        await cur.execute(query, (tenant_id, ref))
        found = await cur.fetchone()
    if found is None:
        what = f"rubric {ref!r} not found" if by_id else f"no rubric is named {ref!r}"
        raise NotFound(f"{what}: create it with `distillery rubrics create FILE`, or see `distillery rubrics list`",
                       field=field)  # fmt: skip
    return found


async def list_page(pool: AsyncConnectionPool, tenant_id: str, size: int, after: str) -> tuple[list[StoredRubric], str]:
    """Up to ``size`` of the tenant's rubrics (every version), newest first, and the next page token."""
    return await newest_first(pool, StoredRubric, "rubrics", tenant_id, size, after)
