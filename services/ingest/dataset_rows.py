"""A dataset's first rows, read back by its tenant: the eval side of its newest split, or all of it.

The rows are the canonical JSONL lines as stored (``text_rows`` and ``tool_rows`` say their shape), read
from S3 one chunk at a time and no further than needed: at most ``limit`` rows and ``MAX_ANSWER_BYTES`` of
them, so a large dataset costs no more memory than the answer (plus one chunk and one row). Only text kinds
are read here; an asr or ocr row names a clip or an image in S3, which a client cannot open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from distillery.ingest.v1 import ingest_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.objects import ObjectStore
from services.ingest import datasets, splits

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Under the 4 MiB a gRPC client takes by default, with room for the rest of the answer.
MAX_ANSWER_BYTES = 3 * 1024 * 1024
SIDES = ("eval", "all")
READABLE: dict[int, str] = {
    ingest_pb2.DATASET_KIND_PAIRS: "pairs",
    ingest_pb2.DATASET_KIND_INPUTS: "inputs",
    ingest_pb2.DATASET_KIND_TOOL_CALLS: "tool-calls",
}
_KIND_NAMES: dict[int, str] = {ingest_pb2.DATASET_KIND_ASR: "an asr", ingest_pb2.DATASET_KIND_OCR: "an ocr"}


@dataclass(frozen=True)
class Rows:
    lines: list[str]
    kind: int
    split_id: str
    total: int
    truncated: bool


def first_lines(chunks: Iterable[bytes], limit: int, max_bytes: int = MAX_ANSWER_BYTES) -> tuple[list[str], bool]:
    """The first ``limit`` non-empty lines of a stream of bytes, at most ``max_bytes`` of them in all, and
    whether any line was left out. Stops reading as soon as it knows: a line longer than what is left of
    ``max_bytes`` is never held whole."""
    lines: list[str] = []
    used, pending = 0, b""

    def full(line: bytes) -> bool:
        return len(lines) == limit or used + len(line) > max_bytes

    for chunk in chunks:
        pending += chunk
        *whole, pending = pending.split(b"\n")
        for line in whole:
            if not line.strip():
                continue
            if full(line):
                return lines, True
            lines.append(line.decode())
            used += len(line)
        if pending.strip() and full(pending):  # the row being read cannot be taken, however it ends
            return lines, True
    if pending.strip():
        if full(pending):
            return lines, True
        lines.append(pending.decode())
    return lines, False


def _read(store: ObjectStore, key: str, limit: int) -> tuple[list[str], bool]:
    chunks = store.chunks(key, chunk_bytes=256 * 1024)
    try:
        return first_lines(chunks, limit)
    finally:
        chunks.close()  # ends the GET when the rows stop early


async def newest_split(pool: AsyncConnectionPool, tenant_id: str, dataset_id: str) -> splits.Split | None:
    """The tenant's newest split with the dataset as its training or its eval dataset."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(splits.Split))
        await cur.execute(
            "SELECT * FROM splits WHERE tenant_id = %s AND (dataset_id = %s OR eval_dataset_id = %s)"
            " ORDER BY created_at DESC, id LIMIT 1",
            (tenant_id, dataset_id, dataset_id),
        )
        return await cur.fetchone()


def _check(side: str, limit: int) -> tuple[str, int]:
    side = side or "eval"
    if side not in SIDES:
        raise InvalidArgument(f'side must be "eval" or "all", not {side!r}', field="side")
    if not 0 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be 0 to {MAX_LIMIT} (0: {DEFAULT_LIMIT}), not {limit}", field="limit")
    return side, limit or DEFAULT_LIMIT


async def read_rows(
    pool: AsyncConnectionPool, store: ObjectStore, tenant_id: str, dataset_id: str, side: str = "", limit: int = 0
) -> Rows:
    """The first ``limit`` canonical rows of one side of the tenant's dataset ``dataset_id``."""
    if not dataset_id:
        raise InvalidArgument("dataset_id is required: the id of one of your datasets (ds_...)", field="dataset_id")
    side, limit = _check(side, limit)
    dataset = await datasets.find(pool, tenant_id, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found; `distillery datasets list` shows yours", field="dataset_id")
    if dataset.kind not in READABLE:
        raise InvalidArgument(
            f"dataset {dataset_id} is {_KIND_NAMES.get(dataset.kind, 'a non-text')} dataset: its rows name clips or "
            "images, so only pairs, inputs and tool-calls datasets are read here",
            field="dataset_id",
        )
    if not dataset.valid or not dataset.canonical_key:
        raise FailedPrecondition(
            f"dataset {dataset_id} has violations, so it has no rows to read; fix them and upload again "
            f"(`distillery datasets show {dataset_id}` shows the report)",
            field="dataset_id",
        )
    if side == "all":
        key, total, split_id = dataset.canonical_key, dataset.rows, ""
    else:
        split = await newest_split(pool, tenant_id, dataset_id)
        if split is None:
            raise FailedPrecondition(
                f"dataset {dataset_id} has no eval side: it has not been split yet. A training run splits its "
                f"dataset (`distillery runs create --dataset {dataset_id} ...`, `--eval-fraction` or "
                '`--eval-dataset`); or read all of its rows (side "all", `models try --all-rows`)',
                field="dataset_id",
            )
        key, total, split_id = split.eval_key, split.eval_rows, split.id
    lines, truncated = await asyncio.to_thread(_read, store, key, limit)
    return Rows(lines=lines, kind=dataset.kind, split_id=split_id, total=total, truncated=truncated)
