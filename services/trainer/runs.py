"""The run state machine, persisted in PostgreSQL.

QUEUED -> VALIDATING -> GENERATING (distillation only) -> TRAINING -> EVALUATING
-> REGISTERING -> SUCCEEDED, and from any non-final state FAILED or CANCELLED.
TRAINING -> PAUSED -> TRAINING pauses a run (``pauses.py``): it keeps its allowance slot.
Final states are absorbing. Every transition is written with an event, in one
transaction, under the run row's lock.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from distillery.trainer.v1 import trainer_pb2 as pb
from services.common.errors import FailedPrecondition, NotFound
from services.common.objects import tenant_key
from services.common.paging import newest_first

FINAL = frozenset({pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED})
_FORWARD = {
    pb.RUN_STATE_QUEUED: {pb.RUN_STATE_VALIDATING},
    # -> SUCCEEDED before training: a validate-only run, done once its rubric is validated (``rubric_runs``).
    pb.RUN_STATE_VALIDATING: {pb.RUN_STATE_GENERATING, pb.RUN_STATE_TRAINING, pb.RUN_STATE_SUCCEEDED},
    pb.RUN_STATE_GENERATING: {pb.RUN_STATE_TRAINING, pb.RUN_STATE_SUCCEEDED},
    pb.RUN_STATE_TRAINING: {pb.RUN_STATE_EVALUATING, pb.RUN_STATE_PAUSED},
    pb.RUN_STATE_PAUSED: {pb.RUN_STATE_TRAINING},
    pb.RUN_STATE_EVALUATING: {pb.RUN_STATE_REGISTERING},
    pb.RUN_STATE_REGISTERING: {pb.RUN_STATE_SUCCEEDED},
}


def allowed(source: int, target: int) -> bool:
    if source in FINAL:
        return False
    return target in _FORWARD.get(source, set()) or target in (pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED)


def state_name(state: int) -> str:
    return pb.RunState.Name(state).removeprefix("RUN_STATE_")


@dataclass(frozen=True)
class Run:
    id: str
    tenant_id: str
    idempotency_key: str
    path: int
    mode: int
    state: int
    request: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    model_id: str = ""
    error: dict[str, str] | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    lease_owner: str = ""
    lease_until: datetime | None = None
    push_token_hash: str = ""
    job_attempt: int = 0
    split: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    generation: dict[str, Any] | None = None
    pauses: int = 0
    resume_pending: bool = False
    rubric_validation: dict[str, Any] | None = None


@dataclass(frozen=True)
class Event:
    run_id: str
    sequence: int
    at: datetime
    event: dict[str, Any]


class RunFailed(Exception):
    """Ends the run FAILED with this error."""

    def __init__(self, code: str, message: str, field: str = "", violations: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.error: dict[str, Any] = {"code": code, "message": message, "field": field}
        if violations:
            self.error["violations"] = violations


def run_prefix(run: Run) -> str:
    """Where a run's objects live in the store."""
    return tenant_key(run.tenant_id, "runs", run.id)


def new_run_id() -> str:
    return f"run_{secrets.token_hex(10)}"


async def get(pool: AsyncConnectionPool, tenant_id: str, run_id: str) -> Run:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Run))
        await cur.execute("SELECT * FROM runs WHERE id = %s AND tenant_id = %s", (run_id, tenant_id))
        run = await cur.fetchone()
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


async def list_page(
    pool: AsyncConnectionPool, tenant_id: str, state: int, size: int, after: str
) -> tuple[list[Run], str]:
    return await newest_first(pool, Run, "runs", tenant_id, size, after, {"state": state})


async def create(pool: AsyncConnectionPool, run: Run) -> tuple[Run, bool]:
    """Insert a QUEUED run, or return the one made earlier with the same idempotency key."""
    async with pool.connection() as conn, conn.transaction():
        if run.idempotency_key:
            cur = conn.cursor(row_factory=class_row(Run))
            await cur.execute(
                "SELECT * FROM runs WHERE tenant_id = %s AND idempotency_key = %s FOR UPDATE",
                (run.tenant_id, run.idempotency_key),
            )
            earlier = await cur.fetchone()
            if earlier is not None:
                return earlier, False
        cur = conn.cursor(row_factory=class_row(Run))
        await cur.execute(
            "INSERT INTO runs (id, tenant_id, idempotency_key, path, mode, state, request)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING *",
            (run.id, run.tenant_id, run.idempotency_key, run.path, run.mode, pb.RUN_STATE_QUEUED, Jsonb(run.request)),
        )
        created = await cur.fetchone()
        if created is None:  # a concurrent create with the same key won the race
            winner = await _by_key(conn, run.tenant_id, run.idempotency_key)
            assert winner is not None
            return winner, False
        await _append(conn, created.id, {"stateChange": {"toState": pb.RunState.Name(pb.RUN_STATE_QUEUED)}})
    return created, True


async def _by_key(conn: AsyncConnection, tenant_id: str, key: str) -> Run | None:
    cur = conn.cursor(row_factory=class_row(Run))
    await cur.execute("SELECT * FROM runs WHERE tenant_id = %s AND idempotency_key = %s", (tenant_id, key))
    return await cur.fetchone()


async def _append(conn: AsyncConnection, run_id: str, event: dict[str, Any]) -> int:
    cur = await conn.execute(
        "INSERT INTO run_events (run_id, sequence, event) VALUES"
        " (%s, (SELECT coalesce(max(sequence), 0) + 1 FROM run_events WHERE run_id = %s), %s) RETURNING sequence",
        (run_id, run_id, Jsonb(event)),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def job_may_go_on(state: int) -> bool:
    """Whether a run's training job keeps training (its push answers keep_going): not once the run is final or
    paused (a paused job saves a checkpoint and stops)."""
    return state not in FINAL and state != pb.RUN_STATE_PAUSED


async def transition(
    pool: AsyncConnectionPool, tenant_id: str, run_id: str, target: int, error: dict[str, Any] | None = None,
    resumed: bool = False,
) -> Run:  # fmt: skip
    """Move a run to ``target``; FAILED_PRECONDITION when the state machine forbids it. ``resumed`` (PAUSED ->
    TRAINING) also counts the pause and asks for a new training job, in the same transaction."""
    async with pool.connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=class_row(Run))
        await cur.execute("SELECT * FROM runs WHERE id = %s AND tenant_id = %s FOR UPDATE", (run_id, tenant_id))
        run = await cur.fetchone()
        if run is None:
            raise NotFound(f"run {run_id} not found")
        if not allowed(run.state, target):
            raise FailedPrecondition(
                f"run {run_id} is {state_name(run.state)}; it cannot move to {state_name(target)}"
                + (" (final states are absorbing)" if run.state in FINAL else "")
            )
        await cur.execute(
            "UPDATE runs SET state = %s, error = %s, updated_at = now(), pauses = pauses + %s,"
            " resume_pending = resume_pending OR %s WHERE id = %s RETURNING *",
            (target, Jsonb(error) if error else None, int(resumed), resumed, run_id),
        )
        moved = await cur.fetchone()
        change: dict[str, Any] = {"fromState": pb.RunState.Name(run.state), "toState": pb.RunState.Name(target)}
        if error:
            change["error"] = error
        await _append(conn, run_id, {"stateChange": change})
    assert moved is not None
    return moved


async def events_after(pool: AsyncConnectionPool, run_id: str, after: int) -> list[Event]:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Event))
        await cur.execute(
            "SELECT * FROM run_events WHERE run_id = %s AND sequence > %s ORDER BY sequence", (run_id, after)
        )
        return await cur.fetchall()


async def find_by_key(pool: AsyncConnectionPool, tenant_id: str, key: str) -> Run | None:
    async with pool.connection() as conn:
        return await _by_key(conn, tenant_id, key)


async def save(pool: AsyncConnectionPool, run_id: str, **columns: Any) -> None:
    """Set some of a run's bookkeeping columns (split, result, model_id, job_attempt, push_token_hash, generation)."""
    allowed_columns = {
        "split", "result", "model_id", "job_attempt", "push_token_hash", "metrics", "generation", "resume_pending",
        "rubric_validation",
    }  # fmt: skip
    assert set(columns) <= allowed_columns, set(columns) - allowed_columns
    values = [Jsonb(v) if isinstance(v, dict) else v for v in columns.values()]
    assignments = ", ".join(f"{name} = %s" for name in columns)
    async with pool.connection() as conn:
        await conn.execute(f"UPDATE runs SET {assignments}, updated_at = now() WHERE id = %s", (*values, run_id))


async def report(pool: AsyncConnectionPool, run_id: str, events: list[dict[str, Any]]) -> Run:
    """Append what a training job pushed (progress, metrics, log lines) and keep the latest on the run."""
    async with pool.connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=class_row(Run))
        await cur.execute("SELECT * FROM runs WHERE id = %s FOR UPDATE", (run_id,))
        run = await cur.fetchone()
        if run is None:
            raise NotFound(f"run {run_id} not found")
        if run.state in FINAL:
            return run
        progress, metrics = run.progress, dict(run.metrics)
        for event in events:
            progress = event.get("progress", progress)
            metrics.update(event.get("metrics", {}).get("values", {}))
            await _append(conn, run_id, event)
        await conn.execute(
            "UPDATE runs SET progress = %s, metrics = %s, updated_at = now() WHERE id = %s",
            (Jsonb(progress), Jsonb(metrics), run_id),
        )
    return run


async def note(pool: AsyncConnectionPool, run_id: str, text: str) -> None:
    """A log line in the run's events (what the trainer did for it: a split, a teacher job, a submission)."""
    await report(pool, run_id, [{"log": {"text": text}}])


async def note_once(pool: AsyncConnectionPool, run_id: str, text: str) -> None:
    """``note``, unless the run already has this very line: for a step that two drivers of one run may both take
    (a lease that lapsed on a busy machine hands the run to another driver before the first one notices)."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (run_id,))  # one writer at a time
        cur = await conn.execute(
            "SELECT 1 FROM run_events WHERE run_id = %s AND event -> 'log' ->> 'text' = %s LIMIT 1", (run_id, text)
        )
        if await cur.fetchone() is None:
            await _append(conn, run_id, {"log": {"text": text}})


# --- leases: which trainer instance drives a run ---


async def claim(pool: AsyncConnectionPool, run_id: str, owner: str, ttl_s: float) -> bool:
    """Take (or renew) the lease on an active run; False when another live instance holds it."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE runs SET lease_owner = %s, lease_until = now() + make_interval(secs => %s)"
            " WHERE id = %s AND state NOT IN (7, 8, 9)"
            " AND (lease_until IS NULL OR lease_until < now() OR lease_owner = %s) RETURNING id",
            (owner, ttl_s, run_id, owner),
        )
        return await cur.fetchone() is not None


async def unclaimed(pool: AsyncConnectionPool) -> list[tuple[str, str]]:
    """(run id, tenant id) of active runs nobody drives: new ones, or their driver stopped or died."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id, tenant_id FROM runs WHERE state NOT IN (7, 8, 9)"
            " AND (lease_until IS NULL OR lease_until < now()) ORDER BY created_at"
        )
        return [(row[0], row[1]) for row in await cur.fetchall()]


async def let_go(pool: AsyncConnectionPool, run_ids: list[str], owner: str) -> None:
    """Give up leases at shutdown, so another instance takes the runs over at once."""
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE runs SET lease_until = NULL WHERE id = ANY(%s) AND lease_owner = %s", (run_ids, owner)
        )


async def find_active_job(pool: AsyncConnectionPool, run_id: str) -> Run | None:
    """The run a training job pushes for, if it has a job (any state: a final run tells the job to stop)."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Run))
        await cur.execute("SELECT * FROM runs WHERE id = %s AND push_token_hash <> ''", (run_id,))
        return await cur.fetchone()
