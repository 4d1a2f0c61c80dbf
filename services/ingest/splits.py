"""Train/eval splits of a pairs, tool-calls, asr or ocr dataset, with no row on both sides.

The eval side is either a user-given eval dataset or a held-out fraction of the
dataset (default 0.1). Rows are compared after normalisation: every message's role
and content, case-folded, runs of whitespace collapsed to one space and stripped.
An asr row is compared by its clip's content (its ``audio_key`` is the sha256 of
the bytes), so the same audio is never on both sides, whatever the file was called
or its transcript says; an ocr row by its image's content (the sha256 ingest keeps).

- Held out: rows identical after normalisation form one group, and each group goes
  wholly to one side. Groups are ordered by a sha256 of (seed, group), a seeded draw
  that does not depend on the file's row order or the Python version, and taken into
  eval in that order while they fit the target size.
- User eval file: train rows whose normalised form appears in eval are dropped and
  counted in ``overlap_removed``.

The split id is derived from the request, so asking again returns the stored split
without recomputing or rewriting it. Each side is canonical JSONL in S3, rows in the
dataset's order.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from distillery.ingest.v1 import ingest_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.objects import ObjectStore, tenant_key
from services.ingest import datasets

DEFAULT_EVAL_FRACTION = 0.1


@dataclass(frozen=True)
class Split:
    tenant_id: str
    id: str
    dataset_id: str
    eval_dataset_id: str
    eval_fraction: float
    seed: int
    train_rows: int
    eval_rows: int
    overlap_removed: int
    train_key: str
    eval_key: str
    created_at: datetime


@dataclass(frozen=True)
class Sides:
    """The canonical JSONL lines of each side."""

    train: list[str]
    eval: list[str]
    overlap_removed: int = 0


def split_id(dataset_id: str, eval_dataset_id: str, eval_fraction: float, seed: int) -> str:
    request = json.dumps([dataset_id, eval_dataset_id, eval_fraction, seed])
    return "sp_" + hashlib.sha256(request.encode()).hexdigest()[:24]


def normalised(line: str) -> str:
    """One canonical row, compared ignoring case and whitespace. A tool-calls row is keyed by its
    request (the turns before the first assistant turn): the trajectories of one request stay on
    one side of the split, so no eval request was seen in training. An asr row is keyed by its clip's content."""
    row = json.loads(line)
    if "audio_key" in row:
        return "audio:" + row["audio_key"].rsplit("/", 1)[-1]
    if "archive_key" in row:  # an ocr row: its image's content (a row stored before sha256 was kept: its name)
        return "image:" + (row.get("sha256") or f"{row['archive_key']}/{row['image']}")
    messages = row["messages"]
    if "tools" in row:
        first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
        messages = messages[:first]
    return json.dumps(
        [[m["role"], " ".join((m.get("content") or "").casefold().split())] for m in messages], ensure_ascii=False
    )


def hold_out(lines: list[str], fraction: float, seed: int) -> Sides:
    """Hold out about ``fraction`` of the rows for eval, whole groups of equal rows at a time."""
    groups: dict[str, list[int]] = {}
    for index, line in enumerate(lines):
        groups.setdefault(normalised(line), []).append(index)
    if len(groups) < 2:
        raise FailedPrecondition(
            f"the dataset has {len(groups)} distinct row(s) after whitespace and case normalisation (clips: by "
            f"content); holding out an "
            "eval side needs at least 2 distinct rows: add rows, or upload an eval file and pass it as eval_dataset_id",
            field="dataset_id",
        )
    target = min(max(1, round(fraction * len(lines))), len(lines) - 1)
    drawn = sorted(groups, key=lambda key: hashlib.sha256(f"{seed}\n{key}".encode()).digest())
    held: set[int] = set()
    for key in drawn:
        if len(held) + len(groups[key]) <= target:
            held.update(groups[key])
    if not held:  # every group is larger than the target: hold out the first drawn, the rest still trains
        held.update(groups[drawn[0]])
    return Sides(
        train=[line for i, line in enumerate(lines) if i not in held],
        eval=[line for i, line in enumerate(lines) if i in held],
    )


def remove_overlap(train: list[str], eval_lines: list[str]) -> Sides:
    """Drop the train rows that also appear in eval."""
    in_eval = {normalised(line) for line in eval_lines}
    kept = [line for line in train if normalised(line) not in in_eval]
    return Sides(train=kept, eval=eval_lines, overlap_removed=len(train) - len(kept))


SPLITTABLE = (
    ingest_pb2.DATASET_KIND_PAIRS, ingest_pb2.DATASET_KIND_TOOL_CALLS, ingest_pb2.DATASET_KIND_ASR,
    ingest_pb2.DATASET_KIND_OCR,
)  # fmt: skip


async def _trainable(pool: AsyncConnectionPool, tenant_id: str, ds_id: str, field: str) -> datasets.Dataset:
    """A valid dataset of the tenant of a kind that trains as it is, or an error naming ``field`` and what to do."""
    found = await datasets.find(pool, tenant_id, ds_id)
    if found is None:
        raise NotFound(f"dataset {ds_id} not found; upload it first (UploadDataset)", field=field)
    if found.kind not in SPLITTABLE:
        raise InvalidArgument(
            f"dataset {ds_id} is not a pairs, tool-calls, asr or ocr dataset; only those are split here: upload the "
            "file as one of those kinds",
            field=field,
        )
    if not found.valid or not found.canonical_key:
        count = sum(found.report.get("counts", {}).values())
        raise FailedPrecondition(
            f"dataset {ds_id} has {count} violations; fix them and upload again "
            "(GetDataset shows the report with line, field and hint)",
            field=field,
        )
    return found


async def _lines(store: ObjectStore, dataset: datasets.Dataset) -> list[str]:
    data = await asyncio.to_thread(store.get_bytes, dataset.canonical_key)
    return [line for line in data.decode().splitlines() if line.strip()]


async def find(pool: AsyncConnectionPool, tenant_id: str, sp_id: str) -> Split | None:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Split))
        await cur.execute("SELECT * FROM splits WHERE tenant_id = %s AND id = %s", (tenant_id, sp_id))
        return await cur.fetchone()


async def get(pool: AsyncConnectionPool, tenant_id: str, sp_id: str) -> Split:
    found = await find(pool, tenant_id, sp_id)
    if found is None:
        raise NotFound(f"split {sp_id} not found")
    return found


async def _insert(pool: AsyncConnectionPool, split: Split) -> Split:
    """Record a split; if it raced with the same request, return the one recorded first."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Split))
        await cur.execute(
            "INSERT INTO splits (tenant_id, id, dataset_id, eval_dataset_id, eval_fraction, seed, train_rows,"
            " eval_rows, overlap_removed, train_key, eval_key) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (tenant_id, id) DO NOTHING RETURNING *",
            (split.tenant_id, split.id, split.dataset_id, split.eval_dataset_id, split.eval_fraction, split.seed,
             split.train_rows, split.eval_rows, split.overlap_removed, split.train_key, split.eval_key),
        )  # fmt: skip
        row = await cur.fetchone()
    return row if row is not None else await get(pool, split.tenant_id, split.id)


async def split_dataset(
    pool: AsyncConnectionPool,
    store: ObjectStore,
    tenant_id: str,
    dataset_id: str,
    *,
    eval_dataset_id: str = "",
    eval_fraction: float = 0.0,
    seed: int = 0,
) -> Split:
    """Split ``dataset_id`` into train and eval sides with no row on both.

    With ``eval_dataset_id`` that dataset is the eval side (``eval_fraction`` must be 0,
    ``seed`` is unused and recorded as 0); otherwise ``eval_fraction`` (0 means
    ``DEFAULT_EVAL_FRACTION``) of the rows are held out with ``seed``.
    """
    if not dataset_id:
        raise InvalidArgument("dataset_id is required: the id of an uploaded pairs dataset", field="dataset_id")
    if eval_dataset_id:
        if eval_fraction:
            raise InvalidArgument(
                "give either eval_dataset_id or eval_fraction, not both: an eval file is used whole",
                field="eval_fraction",
            )
        if eval_dataset_id == dataset_id:
            raise InvalidArgument(
                "eval_dataset_id is the dataset itself; upload a separate eval file, "
                "or leave eval_dataset_id empty to hold out a fraction",
                field="eval_dataset_id",
            )
        seed = 0
    else:
        eval_fraction = eval_fraction or DEFAULT_EVAL_FRACTION
        if not 0 < eval_fraction < 1:
            raise InvalidArgument(
                f"eval_fraction must be between 0 and 1 (exclusive), not {eval_fraction}; "
                f"leave it 0 for the default {DEFAULT_EVAL_FRACTION}",
                field="eval_fraction",
            )

    sp_id = split_id(dataset_id, eval_dataset_id, eval_fraction, seed)
    existing = await find(pool, tenant_id, sp_id)
    if existing is not None:
        return existing

    dataset = await _trainable(pool, tenant_id, dataset_id, "dataset_id")
    if eval_dataset_id:
        eval_dataset = await _trainable(pool, tenant_id, eval_dataset_id, "eval_dataset_id")
        if eval_dataset.kind != dataset.kind:
            raise InvalidArgument("the eval dataset must be of the same kind as the training dataset",
                                  field="eval_dataset_id")  # fmt: skip
        train, eval_lines = await _lines(store, dataset), await _lines(store, eval_dataset)
        sides = await asyncio.to_thread(remove_overlap, train, eval_lines)
        if not sides.train:
            raise FailedPrecondition(
                f"every row of dataset {dataset_id} also appears in eval dataset {eval_dataset_id} (after whitespace "
                "and case normalisation; clips by content), so nothing is left to train on: upload an eval file of "
                "other rows",
                field="eval_dataset_id",
            )
    else:
        sides = await asyncio.to_thread(hold_out, await _lines(store, dataset), eval_fraction, seed)

    train_key = tenant_key(tenant_id, "splits", sp_id, "train.jsonl")
    eval_key = tenant_key(tenant_id, "splits", sp_id, "eval.jsonl")
    for key, lines in ((train_key, sides.train), (eval_key, sides.eval)):
        data = "".join(line + "\n" for line in lines).encode()
        await asyncio.to_thread(store.put_bytes, key, data, "application/jsonl")
    split = Split(
        tenant_id=tenant_id, id=sp_id, dataset_id=dataset_id, eval_dataset_id=eval_dataset_id,
        eval_fraction=eval_fraction, seed=seed, train_rows=len(sides.train), eval_rows=len(sides.eval),
        overlap_removed=sides.overlap_removed, train_key=train_key, eval_key=eval_key,
        created_at=None,  # type: ignore[arg-type]
    )  # fmt: skip
    return await _insert(pool, split)
