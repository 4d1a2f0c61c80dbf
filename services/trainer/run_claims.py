"""Creating a run so that one idempotency key makes one run, however many callers race with it.

The run's row is inserted first, and the allowance slot reserved (a call to the registry) while the
inserting transaction is still open: the row claims the key (the unique index ``runs_idempotency``
on tenant and key). A concurrent insert with the same key waits on that uncommitted row: when the
claim commits, it finds the run and returns it; when the reservation fails, the claim is rolled back
and the next caller tries in its turn (and gets the same answer: the allowance is full). So every
caller gets the one run, or the refusal, and one slot is used.

A key is bound to its request: the same key with other parameters is refused (FAILED_PRECONDITION
naming ``idempotency_key``), as Stripe does, rather than answered with a run made from others.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from distillery.trainer.v1 import trainer_pb2 as pb
from services.common.errors import FailedPrecondition, QuotaExceeded
from services.trainer.runs import Run

log = logging.getLogger("distillery.trainer.run_claims")

Call = Callable[[], Awaitable[None]]


def same_request(stored: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two requests as stored (``run_requests.checked``) ask for the same run."""

    def canonical(request: dict[str, Any]) -> str:
        return json.dumps(json.loads(json.dumps(request)), sort_keys=True, separators=(",", ":"))

    return canonical(stored) == canonical(other)


def check_same_request(earlier: Run, stored: dict[str, Any]) -> Run:
    """``earlier``, the run first made with the key, when ``stored`` asks for the same; refused otherwise."""
    if not same_request(earlier.request, stored):
        raise FailedPrecondition(
            f"idempotency_key {earlier.idempotency_key!r} was used for run {earlier.id} with different parameters: "
            "send the same request again to get that run, or use a new key for a new run",
            field="idempotency_key",
        )
    return earlier


async def create(pool: AsyncConnectionPool, run: Run, reserve: Call, release: Call) -> tuple[Run, bool]:
    """Store the QUEUED run, its slot reserved (``reserve``), or return the run made earlier with its key
    (False). Whatever ``reserve`` raises (RESOURCE_EXHAUSTED), nothing is stored and nothing held."""
    tried = False
    try:
        async with pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=class_row(Run))
            await cur.execute(
                "INSERT INTO runs (id, tenant_id, idempotency_key, path, mode, state, request)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING *",
                (run.id, run.tenant_id, run.idempotency_key, run.path, run.mode, pb.RUN_STATE_QUEUED,
                 Jsonb(run.request)),
            )  # fmt: skip
            created = await cur.fetchone()
            if created is None:  # the key is taken (the claim that held it committed)
                await cur.execute(
                    "SELECT * FROM runs WHERE tenant_id = %s AND idempotency_key = %s",
                    (run.tenant_id, run.idempotency_key),
                )
                earlier = await cur.fetchone()
                assert earlier is not None
                return earlier, False
            await conn.execute(
                "INSERT INTO run_events (run_id, sequence, event) VALUES (%s, 1, %s)",
                (created.id, Jsonb({"stateChange": {"toState": pb.RunState.Name(pb.RUN_STATE_QUEUED)}})),
            )
            tried = True
            try:
                await reserve()  # RESOURCE_EXHAUSTED when the allowance is full: the claim is rolled back
            except QuotaExceeded:
                tried = False  # refused: nothing is held
                raise
    except BaseException:
        if tried:  # a reservation that went through, though its answer was lost or the commit failed
            with contextlib.suppress(Exception):
                await release()
        raise
    return created, True
