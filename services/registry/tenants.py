"""Tenants and their API keys (stored hashed), and resolving a key to its tenant."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from distillery import tokens
from services.common import auth
from services.common.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated

# Tier numbers are the proto's Tier enum values.
TIER_STANDARD, TIER_STARTER, TIER_PRO = 1, 2, 3
TIER_NAMES = {TIER_STANDARD: "standard", TIER_STARTER: "starter", TIER_PRO: "pro"}
# Default private-model allowance per tier.
DEFAULT_ALLOWANCE = {TIER_STANDARD: 3, TIER_STARTER: 10, TIER_PRO: 50}

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    tier: int
    model_allowance: int
    created_at: datetime


_KEY_COLUMNS = "id, tenant_id, name, prefix, created_at, revoked_at, store_traffic"


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    # Requests made with the key through the gateway are stored as traffic.
    store_traffic: bool = False


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


async def create_tenant(pool: AsyncConnectionPool, name: str, tier: int, allowance: int) -> Tenant:
    if not _NAME.match(name):
        raise InvalidArgument(
            f"tenant name {name!r}: use 1-64 of a-z, 0-9 and '-', starting with a letter or digit", field="name"
        )
    tier = tier or TIER_STANDARD
    if tier not in DEFAULT_ALLOWANCE:
        raise InvalidArgument(f"unknown tier {tier}: use standard, starter or pro", field="tier")
    if allowance < 0:
        raise InvalidArgument("model_allowance must not be negative", field="model_allowance")
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Tenant))
        try:
            await cur.execute(
                "INSERT INTO tenants (id, name, tier, model_allowance) VALUES (%s, %s, %s, %s) RETURNING *",
                (new_id("ten"), name, tier, allowance or DEFAULT_ALLOWANCE[tier]),
            )
        except psycopg.errors.UniqueViolation:
            raise AlreadyExists(f"a tenant named {name!r} already exists", field="name") from None
        row = await cur.fetchone()
    assert row is not None
    return row


async def get_tenant(pool: AsyncConnectionPool, tenant_id: str) -> Tenant:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Tenant))
        await cur.execute("SELECT * FROM tenants WHERE id = %s", (tenant_id,))
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return row


async def set_tier(pool: AsyncConnectionPool, tenant_id: str, tier: int, allowance: int) -> Tenant:
    """Move a tenant to ``tier``, with ``allowance`` (> 0) or the tier's default. The quota follows at once:
    an allowance below the models the tenant holds keeps them all, and new runs are refused until the count
    is under it (``quotas.reserve``)."""
    if tier not in DEFAULT_ALLOWANCE:
        raise InvalidArgument(f"unknown tier {tier}: use standard, starter or pro", field="tier")
    if allowance < 0:
        raise InvalidArgument("model_allowance must not be negative (0: the tier's default)", field="model_allowance")
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Tenant))
        await cur.execute(
            "UPDATE tenants SET tier = %s, model_allowance = %s WHERE id = %s RETURNING *",
            (tier, allowance or DEFAULT_ALLOWANCE[tier], tenant_id),
        )
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"tenant {tenant_id} not found", field="tenant_id")
    return row


async def create_api_key(
    pool: AsyncConnectionPool, tenant_id: str, name: str, store_traffic: bool = False
) -> tuple[ApiKey, str]:
    """Return the key's record and the secret, which is not kept anywhere."""
    await get_tenant(pool, tenant_id)
    secret = tokens.new_api_key()
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(ApiKey))
        await cur.execute(
            "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, store_traffic)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING " + _KEY_COLUMNS,
            (new_id("key"), tenant_id, name or "default", secret[:9], auth.hash_key(secret), store_traffic),
        )
        row = await cur.fetchone()
    assert row is not None
    return row, secret


async def list_api_keys(pool: AsyncConnectionPool, tenant_id: str) -> list[ApiKey]:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(ApiKey))
        await cur.execute(
            "SELECT " + _KEY_COLUMNS + " FROM api_keys WHERE tenant_id = %s ORDER BY created_at, id",
            (tenant_id,),
        )
        return await cur.fetchall()


async def revoke_api_key(pool: AsyncConnectionPool, tenant_id: str, key_id: str) -> ApiKey:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(ApiKey))
        await cur.execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s AND tenant_id = %s"
            " RETURNING " + _KEY_COLUMNS,
            (key_id, tenant_id),
        )
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    return row


async def authenticate(pool: AsyncConnectionPool, key: str) -> auth.Caller:
    return (await authenticate_key(pool, key))[0]


async def authenticate_key(pool: AsyncConnectionPool, key: str) -> tuple[auth.Caller, bool]:
    """The key's caller, and whether requests made with it are stored as traffic."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT k.id, t.id, t.tier, k.store_traffic FROM api_keys k JOIN tenants t ON t.id = k.tenant_id"
            " WHERE k.key_hash = %s AND k.revoked_at IS NULL",
            (auth.hash_key(key),),
        )
        row = await cur.fetchone()
    if row is None:
        raise Unauthenticated("invalid or revoked API key")
    return auth.Caller(key_id=row[0], tenant_id=row[1], tier=row[2]), bool(row[3])
