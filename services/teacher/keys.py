"""The tenants' own provider keys. Only their last four characters ever leave the service."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from services.common.errors import NotFound


@dataclass(frozen=True)
class StoredKey:
    provider: int
    last4: str
    created_at: datetime
    checked_at: datetime | None


async def list_keys(pool: AsyncConnectionPool, tenant_id: str) -> list[StoredKey]:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(StoredKey))
        await cur.execute(
            "SELECT provider, last4, created_at, checked_at FROM provider_keys WHERE tenant_id = %s ORDER BY provider",
            (tenant_id,),
        )
        return await cur.fetchall()


async def delete_key(pool: AsyncConnectionPool, tenant_id: str, provider: int) -> None:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "DELETE FROM provider_keys WHERE tenant_id = %s AND provider = %s", (tenant_id, provider)
        )
        if cur.rowcount == 0:
            raise NotFound("no key is stored for that provider")
