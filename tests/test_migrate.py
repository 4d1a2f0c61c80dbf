"""``python -m services.migrate`` (the Helm chart's migration Job) against a real PostgreSQL: every
service's schema is migrated from empty, a second run applies nothing, and a database that cannot be
reached or a missing URL ends it with a non-zero status the Job retries on."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from distillery.stack.servers import free_port
from services import migrate
from services.common import db

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def empty_database(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the test PostgreSQL; its URL."""
    name = "migrate_" + secrets.token_hex(4)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")  # type: ignore[arg-type]


def applied_versions(url: str, schema: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT version FROM {schema}.schema_migrations ORDER BY version").fetchall()  # type: ignore[arg-type]
    return [row[0] for row in rows]


def test_migrates_every_schema_then_nothing_more(empty_database: str) -> None:
    env = {**os.environ, "DISTILLERY_DATABASE_URL": empty_database}
    done = subprocess.run([sys.executable, "-m", "services.migrate"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert {schema for schema, _ in migrate.SCHEMAS} == {"registry", "ingest", "teacher", "trainer"}
    for schema, folder in migrate.SCHEMAS:
        expected = [version for version, _ in db.migration_files(folder)]
        assert expected and applied_versions(empty_database, schema) == expected, schema
    # Up to date: a second run (the next upgrade's Job, or a service starting) applies nothing.
    assert asyncio.run(migrate.migrate_all(empty_database)) == {schema: [] for schema, _ in migrate.SCHEMAS}


def test_unreachable_database_and_missing_url_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILLERY_DATABASE_URL", f"postgresql://nobody:wrong@127.0.0.1:{free_port()}/none")
    assert migrate.main() == 1
    monkeypatch.delenv("DISTILLERY_DATABASE_URL")
    assert migrate.main() == 2
