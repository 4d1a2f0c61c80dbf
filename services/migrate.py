"""``python -m services.migrate``: apply every service's database migrations, then exit.

The Helm chart runs it as a pre-install/pre-upgrade Job (deploy/helm/distillery/templates/migrations.yaml),
so that an upgrade's schema changes are in place before any new pod starts. Each service also migrates
its own schema when it starts (``services.common.backends.open_backends``), with the same function and the
same per-schema advisory lock: running both, or several at once, is safe. It reads one setting,
``DISTILLERY_DATABASE_URL`` (and ``DISTILLERY_LOG_LEVEL``). Exit status 0: every schema is migrated;
1: the database could not be reached or a migration failed (the Job retries); 2: bad settings.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import psycopg

from services.common import db
from services.common.errors import DistilleryError
from services.common.logs import setup_logging
from services.common.settings import database_url, env_str
from services.ingest import server as ingest_server
from services.registry import server as registry_server
from services.teacher import server as teacher_server
from services.trainer import server as trainer_server

log = logging.getLogger("distillery.migrate")

# Each service's schema and migrations folder, as its server opens them.
SCHEMAS: tuple[tuple[str, Path], ...] = tuple(
    (server.SCHEMA, server.MIGRATIONS) for server in (registry_server, ingest_server, teacher_server, trainer_server)
)


async def migrate_all(url: str) -> dict[str, list[int]]:
    """Migrate every schema; the versions applied now, by schema (empty lists: already up to date)."""
    applied = {}
    for schema, folder in SCHEMAS:
        applied[schema] = await db.migrate(url, schema, folder)
        log.info("schema %s is up to date (%d migrations applied now)", schema, len(applied[schema]))
    return applied


def main() -> int:
    setup_logging("migrate")
    try:
        setup_logging("migrate", env_str("DISTILLERY_LOG_LEVEL", "INFO").upper())
        url = database_url()
    except DistilleryError as err:
        log.error("bad settings: %s", err.message)
        return 2
    try:
        asyncio.run(migrate_all(url))
    except (psycopg.Error, OSError) as err:
        log.error("cannot migrate: %s (%s); is the database up and DISTILLERY_DATABASE_URL right?",
                  type(err).__name__, str(err).splitlines()[0] if str(err) else "")  # fmt: skip
        return 1
    except DistilleryError as err:
        log.error("cannot migrate: %s", err.message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
