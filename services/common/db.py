"""PostgreSQL through psycopg 3: one async pool per service, bound to its own schema.

Each service owns one schema and its migrations, ``services/<name>/migrations/
NNNN_<what>.sql``, applied in order at start inside a transaction each, under an
advisory lock so that two replicas starting together apply them once. Applied
versions are kept in ``<schema>.schema_migrations``.
"""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from services.common.errors import Unavailable

log = logging.getLogger("distillery.db")

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migration_files(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION.match(path.name)
        if not match:
            raise ValueError(f"migration {path} is not named NNNN_<what>.sql")
        found.append((int(match.group(1)), path))
    versions = [v for v, _ in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations in {folder} share a version number")
    return found


async def migrate(url: str, schema: str, folder: Path) -> list[int]:
    """Apply the migrations of ``folder`` not yet applied to ``schema``; return those applied."""
    applied_now = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (zlib.crc32(schema.encode()),))
        try:
            await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                    " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(sql.Identifier(schema))
            )
            cur = await conn.execute(sql.SQL("SELECT version FROM {}.schema_migrations").format(sql.Identifier(schema)))
            done = {row[0] for row in await cur.fetchall()}
            for version, path in migration_files(folder):
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
                    await conn.execute(path.read_text())  # type: ignore[arg-type]
                    await conn.execute(
                        sql.SQL("INSERT INTO {}.schema_migrations (version, name) VALUES (%s, %s)").format(
                            sql.Identifier(schema)
                        ),
                        (version, path.name),
                    )
                log.info("applied migration %s to schema %s", path.name, schema)
                applied_now.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (zlib.crc32(schema.encode()),))
    return applied_now


# Every call has a deadline: connecting, waiting for a pooled connection, and each statement.
CONNECT_TIMEOUT_S = 5
POOL_WAIT_S = 10.0
STATEMENT_TIMEOUT_MS = 60_000


async def open_pool(url: str, schema: str, *, min_size: int = 1, max_size: int = 10) -> AsyncConnectionPool:
    """A pool whose connections see only ``schema`` (and public) on their search path.

    A connection is checked before it is handed out (``check_connection``), so one left broken by
    a PostgreSQL restart is replaced instead of failing the next request; a query past its
    deadline is cancelled by the server (QueryCanceled, answered as UNAVAILABLE)."""
    options = f"-c search_path={schema} -c statement_timeout={STATEMENT_TIMEOUT_MS}"
    pool = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"options": options, "autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
        open=False,
        timeout=POOL_WAIT_S,
        check=AsyncConnectionPool.check_connection,
    )
    try:
        await pool.open(wait=True, timeout=15)
    except Exception as err:
        raise Unavailable(f"cannot connect to PostgreSQL for schema {schema}: {err}") from None
    return pool
