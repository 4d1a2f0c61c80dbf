"""Upload sessions in PostgreSQL: what an upload promised and how many bytes are staged.

A session is opened by the first stream (or ``CreateUploadUrl``) with a given
upload id. A stream that comes back with the same id must promise the same plan
and start at the acknowledged offset. Acknowledging is a compare-and-set on the
offset, so two streams of one upload can never both write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from services.common.errors import FailedPrecondition, NotFound
from services.ingest.uploads import Plan


@dataclass(frozen=True)
class Session:
    tenant_id: str
    id: str
    plan: dict[str, Any]
    size_bytes: int
    acknowledged: int
    presigned: bool
    dataset_id: str
    created_at: datetime
    updated_at: datetime

    @property
    def the_plan(self) -> Plan:
        return Plan.from_json(self.plan)


async def find(pool: AsyncConnectionPool, tenant_id: str, upload_id: str) -> Session | None:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Session))
        await cur.execute("SELECT * FROM uploads WHERE tenant_id = %s AND id = %s", (tenant_id, upload_id))
        return await cur.fetchone()


async def get(pool: AsyncConnectionPool, tenant_id: str, upload_id: str) -> Session:
    found = await find(pool, tenant_id, upload_id)
    if found is None:
        raise NotFound(f"upload {upload_id} not found")
    return found


async def open_session(
    pool: AsyncConnectionPool, tenant_id: str, upload_id: str, plan: Plan, *, offset: int, presigned: bool = False
) -> Session:
    """The session of ``upload_id``, created if new; a resumed one must have the same plan and offset."""
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO uploads (tenant_id, id, plan, size_bytes, presigned) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (tenant_id, id) DO NOTHING",
            (tenant_id, upload_id, Jsonb(plan.to_json()), plan.total, presigned),
        )
    session = await get(pool, tenant_id, upload_id)
    if session.the_plan != plan:
        raise FailedPrecondition(
            f"upload {upload_id} was opened for other files or options; use a new upload_id for this one",
            field="header.upload_id",
        )
    if session.presigned != presigned:
        how = "through presigned URLs: call RegisterUpload" if session.presigned else "as a stream: resume it"
        raise FailedPrecondition(f"upload {upload_id} was opened {how}", field="header.upload_id")
    if not presigned and not session.dataset_id and offset != session.acknowledged:
        raise FailedPrecondition(
            f"upload {upload_id} holds {session.acknowledged} bytes; resend the header with offset "
            f"{session.acknowledged} and the bytes from there",
            field="header.offset",
        )
    return session


async def acknowledge(pool: AsyncConnectionPool, tenant_id: str, upload_id: str, old: int, new: int) -> None:
    """Move the acknowledged offset from ``old`` to ``new``; fails if another stream moved it."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE uploads SET acknowledged = %s, updated_at = now()"
            " WHERE tenant_id = %s AND id = %s AND acknowledged = %s AND dataset_id = ''",
            (new, tenant_id, upload_id, old),
        )
        if cur.rowcount != 1:
            raise FailedPrecondition(
                f"upload {upload_id} is being sent by another stream; send each upload once at a time",
                field="header.upload_id",
            )


async def finish(pool: AsyncConnectionPool, tenant_id: str, upload_id: str, dataset_id: str) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE uploads SET dataset_id = %s, acknowledged = size_bytes, updated_at = now()"
            " WHERE tenant_id = %s AND id = %s",
            (dataset_id, tenant_id, upload_id),
        )
