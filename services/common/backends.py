"""What every service opens at start: its migrated PostgreSQL schema, the S3 bucket,
and (except the registry itself) the channel through which it resolves API keys."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import grpc
from psycopg_pool import AsyncConnectionPool

from services.common import db
from services.common.auth import CachedResolver, KeyResolver, registry_resolver
from services.common.clients import service_channel
from services.common.objects import ObjectStore
from services.common.settings import S3Settings

# How long a health probe of one dependency may take before it counts as unreachable.
PROBE_TIMEOUT_S = 3.0


@dataclass
class Backends:
    pool: AsyncConnectionPool
    store: ObjectStore

    async def problems(self) -> list[str]:
        """What of the service's database and object store cannot be reached now (empty: both can).
        The health monitor (``server.start_server``) asks this every few seconds."""
        found = []
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S), self.pool.connection(timeout=PROBE_TIMEOUT_S) as conn:
                await conn.execute("SELECT 1")
        except Exception as err:
            found.append(f"database unreachable ({type(err).__name__})")
        try:
            # The probe's thread may outlive the timeout on a stalled store; the answer does not wait for it.
            await asyncio.wait_for(asyncio.to_thread(self.store.client.bucket_exists, self.store.bucket),
                                   PROBE_TIMEOUT_S)  # fmt: skip
        except Exception as err:
            found.append(f"object store unreachable ({type(err).__name__})")
        return found


async def open_backends(database_url: str, schema: str, migrations: Path, s3: S3Settings) -> Backends:
    await db.migrate(database_url, schema, migrations)
    pool = await db.open_pool(database_url, schema)
    store = ObjectStore(s3)
    await asyncio.to_thread(store.ensure_bucket)
    return Backends(pool, store)


def registry_keys(address: str, timeout_s: float) -> tuple[grpc.aio.Channel, KeyResolver]:
    """A channel to the registry and a cached resolver of API keys through it."""
    channel = service_channel(address, timeout_s)
    return channel, CachedResolver(registry_resolver(channel, timeout_s))
