"""The private-model allowance: reserve a slot at run start, commit it at registration.

used      = registered models of the tenant
reserved  = slots held by runs in progress
available = allowance - used - reserved

Reservations take the tenant row's lock, so two runs racing for the last slot
cannot both get it.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from services.common.errors import NotFound, QuotaExceeded
from services.registry.tenants import TIER_NAMES


@dataclass(frozen=True)
class Quota:
    tenant_id: str
    tier: int
    allowance: int
    used: int
    reserved: int

    @property
    def available(self) -> int:
        return max(0, self.allowance - self.used - self.reserved)


async def quota_in(conn: AsyncConnection, tenant_id: str, *, lock: bool = False) -> Quota:
    cur = await conn.execute(
        "SELECT tier, model_allowance FROM tenants WHERE id = %s" + (" FOR UPDATE" if lock else ""), (tenant_id,)
    )
    tenant = await cur.fetchone()
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} not found")
    cur = await conn.execute(
        "SELECT (SELECT count(*) FROM models WHERE tenant_id = %(t)s),"
        " (SELECT count(*) FROM reservations WHERE tenant_id = %(t)s AND state = 'reserved')",
        {"t": tenant_id},
    )
    counts = await cur.fetchone()
    assert counts is not None
    return Quota(tenant_id, tenant[0], tenant[1], counts[0], counts[1])


async def get_quota(pool: AsyncConnectionPool, tenant_id: str) -> Quota:
    async with pool.connection() as conn:
        return await quota_in(conn, tenant_id)


def full_error(quota: Quota) -> QuotaExceeded:
    """RESOURCE_EXHAUSTED for a new run. An allowance lowered below the models held (``tenants.set_tier``) keeps
    them all; new runs wait until the count is under it, and the message says how many to delete."""
    tier = TIER_NAMES.get(quota.tier, "unknown")
    held = quota.used + quota.reserved
    if quota.used > quota.allowance:
        return QuotaExceeded(
            f"you hold {quota.used} private models, over the allowance of {quota.allowance} of your {tier} tier "
            f"({quota.reserved} more held by runs in progress): the models are kept, but new runs wait until "
            f"you hold fewer than {quota.allowance}; delete {held - quota.allowance + 1} with "
            "`distillery models delete ID`, or move to a higher tier",
            subject=f"tenant:{quota.tenant_id}",
            description=f"private models: allowance {quota.allowance}, used {quota.used}, reserved {quota.reserved}",
        )
    return QuotaExceeded(
        f"the private-model allowance of your {tier} tier is full ({quota.used} models registered, "
        f"{quota.reserved} held by runs in progress, allowance {quota.allowance}): delete a model with "
        "`distillery models delete ID`, wait for a run to finish, or move to a higher tier",
        subject=f"tenant:{quota.tenant_id}",
        description=f"private models: allowance {quota.allowance}, used {quota.used}, reserved {quota.reserved}",
    )


async def reserve(pool: AsyncConnectionPool, tenant_id: str, run_id: str) -> str:
    """Hold a slot for ``run_id``; idempotent. Returns the reservation's state."""
    async with pool.connection() as conn, conn.transaction():
        quota = await quota_in(conn, tenant_id, lock=True)
        cur = await conn.execute("SELECT tenant_id, state FROM reservations WHERE run_id = %s", (run_id,))
        existing = await cur.fetchone()
        if existing is not None:
            if existing[0] != tenant_id:
                raise NotFound(f"run {run_id} not found")
            return str(existing[1])
        if quota.available <= 0:
            raise full_error(quota)
        await conn.execute(
            "INSERT INTO reservations (run_id, tenant_id, state) VALUES (%s, %s, 'reserved')", (run_id, tenant_id)
        )
    return "reserved"


async def release(pool: AsyncConnectionPool, tenant_id: str, run_id: str) -> str:
    """Free the slot of a run that ends without a model; idempotent, committed slots stay."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE reservations SET state = CASE WHEN state = 'reserved' THEN 'released' ELSE state END,"
            " updated_at = now() WHERE run_id = %s AND tenant_id = %s RETURNING state",
            (run_id, tenant_id),
        )
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no reservation for run {run_id}")
    return str(row[0])
