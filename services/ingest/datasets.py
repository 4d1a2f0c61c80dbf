"""Dataset versions: immutable, addressed by their content.

A version's id is drawn from its upload's content digest (kind, files and the
options that change validation; see ``uploads.content_digest``): an upload
identical in content to an earlier one of the same tenant reuses that version.
The uploaded files are in S3 under ``uploads/<sha256>``; a valid version's
canonical JSONL under ``datasets/<id>/canonical.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from services.common.errors import NotFound
from services.common.paging import newest_first


@dataclass(frozen=True)
class Dataset:
    tenant_id: str
    id: str
    display_name: str
    kind: int
    source_format: int
    source_sha256: str
    size_bytes: int
    rows: int
    valid: bool
    object_key: str
    created_at: datetime
    report: dict[str, Any] = field(default_factory=dict)
    canonical_key: str = ""


def dataset_id(digest_hex: str) -> str:
    return "ds_" + digest_hex[:24]


async def find(pool: AsyncConnectionPool, tenant_id: str, ds_id: str) -> Dataset | None:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Dataset))
        await cur.execute("SELECT * FROM datasets WHERE tenant_id = %s AND id = %s", (tenant_id, ds_id))
        return await cur.fetchone()


async def get(pool: AsyncConnectionPool, tenant_id: str, ds_id: str) -> Dataset:
    found = await find(pool, tenant_id, ds_id)
    if found is None:
        raise NotFound(f"dataset {ds_id} not found")
    return found


async def insert(pool: AsyncConnectionPool, ds: Dataset) -> Dataset:
    """Insert a new version; if it raced with an identical upload, return the one stored."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Dataset))
        await cur.execute(
            "INSERT INTO datasets (tenant_id, id, display_name, kind, source_format, source_sha256, size_bytes,"
            " rows, valid, object_key, report, canonical_key) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (tenant_id, id) DO NOTHING RETURNING *",
            (ds.tenant_id, ds.id, ds.display_name, ds.kind, ds.source_format, ds.source_sha256, ds.size_bytes,
             ds.rows, ds.valid, ds.object_key, Jsonb(ds.report), ds.canonical_key),
        )  # fmt: skip
        row = await cur.fetchone()
    return row if row is not None else await get(pool, ds.tenant_id, ds.id)


async def list_page(
    pool: AsyncConnectionPool, tenant_id: str, kind: int, size: int, after: str
) -> tuple[list[Dataset], str]:
    return await newest_first(pool, Dataset, "datasets", tenant_id, size, after, {"kind": kind})
