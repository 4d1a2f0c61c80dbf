"""Dataset versions: uploaded bytes stored once in S3, addressed by their sha256.

An upload identical in content to an earlier one of the same tenant reuses that
dataset version; versions are immutable.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from services.common.errors import InvalidArgument, NotFound
from services.common.paging import newest_first

SPOOL_IN_MEMORY = 8 * 1024 * 1024


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


def dataset_id(sha256_hex: str) -> str:
    return "ds_" + sha256_hex[:24]


@dataclass
class Received:
    """An upload's bytes, spooled to memory or disk, with their size and hash checked."""

    file: Any  # a SpooledTemporaryFile positioned at 0
    size: int
    sha256: str


async def receive(chunks: AsyncIterator[bytes], *, declared_size: int, declared_sha256: str, limit: int) -> Received:
    if declared_size <= 0:
        raise InvalidArgument("size_bytes must be the file's size in bytes (> 0)", field="header.size_bytes")
    if declared_size > limit:
        raise InvalidArgument(
            f"the file is {declared_size} bytes, over the upload limit of {limit} bytes (DISTILLERY_MAX_UPLOAD_BYTES)",
            field="header.size_bytes",
        )
    digest = hashlib.sha256()
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - returned to the caller
    size = 0
    async for data in chunks:
        size += len(data)
        if size > declared_size:
            spool.close()
            raise InvalidArgument(
                f"received more than the declared {declared_size} bytes; send size_bytes equal to the file's size",
                field="header.size_bytes",
            )
        digest.update(data)
        spool.write(data)
    if size != declared_size:
        spool.close()
        raise InvalidArgument(
            f"received {size} bytes but the header declared {declared_size}: the upload was cut short, resend it",
            field="header.size_bytes",
        )
    actual = digest.hexdigest()
    if declared_sha256 and actual != declared_sha256.lower():
        spool.close()
        raise InvalidArgument(
            f"sha256 mismatch: the header declared {declared_sha256} but the bytes hash to {actual}; "
            "the file changed or was corrupted in transit, resend it",
            field="header.sha256",
        )
    spool.seek(0)
    return Received(spool, size, actual)


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
