"""Generation jobs and their rows in PostgreSQL.

A job is QUEUED, RUNNING, then SUCCEEDED, FAILED or CANCELLED. Each finished row is
one ``generation_rows`` row, written as it finishes: the rows of a job that are not
there yet are exactly the ones still to ask for. A row is done (``ok``), failed (the
provider could not answer it), or rejected (a tool trajectory that failed verification:
kept with its reasons). A job is driven by the teacher instance holding its lease
(``owner``, ``lease_until``), renewed while it works. A tool-trajectory job's prompts
are its ``plan``, written once (``set_plan``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from distillery.teacher.v1 import teacher_pb2 as pb
from services.common.errors import FailedPrecondition, NotFound
from services.common.paging import newest_first
from services.teacher import prices

ACTIVE = (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
FINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)
FAILURES_SHOWN = 100


@dataclass(frozen=True)
class Job:
    id: str
    tenant_id: str
    run_id: str
    kind: int
    state: int
    teacher: str
    request: dict[str, Any]
    rows_total: int
    estimate: dict[str, Any]
    billed: bool
    output_key: str
    output_dataset_id: str
    rows_duplicate: int
    error: str
    owner: str | None
    lease_until: datetime | None
    created_at: datetime
    updated_at: datetime
    # Tool trajectories: the prompts, once written (tool_jobs.plan_of).
    plan: dict[str, Any] | None = None


@dataclass(frozen=True)
class Failure:
    row: int
    prompt_name: str
    code: str
    message: str


@dataclass
class Tally:
    """What a job's stored rows add up to."""

    rows_done: int = 0
    rows_failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    by_prompt: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    failed_by_code: dict[str, int] = field(default_factory=dict)
    # Tool trajectories that failed verification: how many, by reason code, the first ones.
    rows_rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rejections: list[Failure] = field(default_factory=list)

    def cost_usd(self, teacher: str) -> float:
        provider, _, model = teacher.partition(":")
        return prices.cost_usd(provider, model, self.input_tokens, self.output_tokens)


def new_job_id() -> str:
    return "gj_" + secrets.token_hex(8)


async def create(pool: AsyncConnectionPool, job: dict[str, Any]) -> tuple[Job, bool]:
    """Store a new job; with a run id already used for this kind, the job stored first (and False)."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Job))
        await cur.execute(
            "INSERT INTO generation_jobs (id, tenant_id, run_id, kind, state, teacher, request, rows_total, estimate,"
            " billed) VALUES (%(id)s, %(tenant_id)s, %(run_id)s, %(kind)s, %(state)s, %(teacher)s, %(request)s,"
            " %(rows_total)s, %(estimate)s, %(billed)s) ON CONFLICT DO NOTHING RETURNING *",
            {**job, "request": Jsonb(job["request"]), "estimate": Jsonb(job["estimate"])},
        )
        created = await cur.fetchone()
        if created is not None:
            return created, True
        await cur.execute(
            "SELECT * FROM generation_jobs WHERE tenant_id = %s AND run_id = %s AND kind = %s",
            (job["tenant_id"], job["run_id"], job["kind"]),
        )
        earlier = await cur.fetchone()
        if earlier is None:
            raise FailedPrecondition("a job with that id exists already; try again")
        return earlier, False


async def get(pool: AsyncConnectionPool, tenant_id: str, job_id: str) -> Job:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Job))
        await cur.execute("SELECT * FROM generation_jobs WHERE tenant_id = %s AND id = %s", (tenant_id, job_id))
        found = await cur.fetchone()
    if found is None:
        raise NotFound(f"generation job {job_id} not found")
    return found


async def list_page(pool: AsyncConnectionPool, tenant_id: str, size: int, after: str) -> tuple[list[Job], str]:
    return await newest_first(pool, Job, "generation_jobs", tenant_id, size, after)


async def finish(pool: AsyncConnectionPool, job_id: str, state: int, *, error: str = "", **outputs: Any) -> Job | None:
    """Move an active job to a final state (None when it was final already: cancelled meanwhile)."""
    sets = "".join(f", {name} = %({name})s" for name in outputs)
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Job))
        await cur.execute(
            f"UPDATE generation_jobs SET state = %(state)s, error = %(error)s, owner = NULL, lease_until = NULL,"
            f" updated_at = now(){sets} WHERE id = %(id)s AND state = ANY(%(active)s) RETURNING *",
            {"state": state, "error": error, "id": job_id, "active": list(ACTIVE), **outputs},
        )
        return await cur.fetchone()


async def cancel(pool: AsyncConnectionPool, tenant_id: str, job_id: str) -> Job:
    job = await get(pool, tenant_id, job_id)
    if job.state in FINAL:
        return job
    await finish(pool, job_id, pb.JOB_STATE_CANCELLED, error="cancelled")
    return await get(pool, tenant_id, job_id)


# --- leases ---


async def claim(pool: AsyncConnectionPool, owner: str, lease_s: float) -> list[Job]:
    """Take every active job whose lease lapsed (new ones, or a stopped or dead instance's)."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Job))
        await cur.execute(
            "UPDATE generation_jobs SET owner = %s, lease_until = now() + make_interval(secs => %s),"
            " state = %s, updated_at = now()"
            " WHERE state = ANY(%s) AND (lease_until IS NULL OR lease_until < now()) RETURNING *",
            (owner, lease_s, pb.JOB_STATE_RUNNING, list(ACTIVE)),
        )
        return await cur.fetchall()


async def renew(pool: AsyncConnectionPool, owner: str, job_ids: list[str], lease_s: float) -> set[str]:
    """Renew our leases; the ids we still hold (a job cancelled or taken over drops out)."""
    if not job_ids:
        return set()
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE generation_jobs SET lease_until = now() + make_interval(secs => %s)"
            " WHERE id = ANY(%s) AND owner = %s AND state = ANY(%s) RETURNING id",
            (lease_s, job_ids, owner, list(ACTIVE)),
        )
        return {r[0] for r in await cur.fetchall()}


async def let_go(pool: AsyncConnectionPool, owner: str, job_ids: list[str]) -> None:
    if job_ids:
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE generation_jobs SET owner = NULL, lease_until = NULL WHERE id = ANY(%s) AND owner = %s",
                (job_ids, owner),
            )


async def set_plan(pool: AsyncConnectionPool, job_id: str, plan: dict[str, Any], rows_total: int) -> dict[str, Any]:
    """Store a job's plan and its real row count; the plan stored first when there is one already."""
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE generation_jobs SET plan = %s, rows_total = %s, updated_at = now() WHERE id = %s AND plan IS NULL",
            (Jsonb(plan), rows_total, job_id),
        )
        cur = await conn.execute("SELECT plan FROM generation_jobs WHERE id = %s", (job_id,))
        stored = await cur.fetchone()
    if stored is None or stored[0] is None:
        raise NotFound(f"generation job {job_id} not found")
    return dict(stored[0])


# --- rows ---


async def done_rows(pool: AsyncConnectionPool, job_id: str) -> set[int]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT row FROM generation_rows WHERE job_id = %s", (job_id,))
        return {r[0] for r in await cur.fetchall()}


async def save_row(pool: AsyncConnectionPool, job_id: str, row: dict[str, Any]) -> None:
    """Store one finished row (a second store of the same row keeps the first).

    Done: an ``output``; failed: none; rejected: ``rejected`` with its ``reasons`` (the output kept).
    """
    output, rejected = row.get("output"), bool(row.get("rejected"))
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO generation_rows (job_id, row, prompt_name, ok, output, code, message, input_tokens,"
            " output_tokens, attempts, rejected, reasons) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (job_id, row["row"], row.get("prompt_name", ""), output is not None and not rejected,
             Jsonb(output) if output is not None else None, row.get("code", ""), row.get("message", ""),
             row.get("input_tokens", 0), row.get("output_tokens", 0), row.get("attempts", 1), rejected,
             list(row.get("reasons", []))),
        )  # fmt: skip


async def outputs(pool: AsyncConnectionPool, job_id: str) -> list[dict[str, Any]]:
    """The generated rows in row order."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT output FROM generation_rows WHERE job_id = %s AND ok ORDER BY row", (job_id,))
        return [r[0] for r in await cur.fetchall()]


async def tally(pool: AsyncConnectionPool, job_id: str) -> Tally:
    """Rows done, failed and rejected, and the usage of every request: the rows', and the plan's."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT prompt_name, ok, rejected, count(*) AS n, sum(input_tokens) AS i, sum(output_tokens) AS o,"
            " sum(attempts) AS a FROM generation_rows WHERE job_id = %s GROUP BY prompt_name, ok, rejected",
            (job_id,),
        )
        tally = Tally()
        for group in await cur.fetchall():
            n = int(group["n"])
            tally.input_tokens += int(group["i"])
            tally.output_tokens += int(group["o"])
            tally.requests += int(group["a"])
            if group["ok"]:
                tally.rows_done += n
                tally.by_prompt[group["prompt_name"]] = tally.by_prompt.get(group["prompt_name"], 0) + n
            elif group["rejected"]:
                tally.rows_rejected += n
            else:
                tally.rows_failed += n
        plan_cur = await conn.execute("SELECT plan FROM generation_jobs WHERE id = %s", (job_id,))
        plan = await plan_cur.fetchone()
        if plan is not None and plan[0]:
            tally.input_tokens += int(plan[0].get("input_tokens", 0))
            tally.output_tokens += int(plan[0].get("output_tokens", 0))
            tally.requests += int(plan[0].get("requests", 0))
        if tally.rows_failed:
            codes = await conn.execute(
                "SELECT code, count(*) FROM generation_rows WHERE job_id = %s AND NOT ok AND NOT rejected"
                " GROUP BY code ORDER BY 2 DESC",
                (job_id,),
            )
            tally.failed_by_code = {code: int(n) for code, n in await codes.fetchall()}
            tally.failures = await _first(conn, job_id, "NOT ok AND NOT rejected")
        if tally.rows_rejected:
            reasons = await conn.execute(
                "SELECT split_part(reason, ':', 1), count(DISTINCT row) FROM generation_rows, unnest(reasons) AS reason"
                " WHERE job_id = %s AND rejected GROUP BY 1 ORDER BY 2 DESC, 1",
                (job_id,),
            )
            tally.rejected_by_reason = {code: int(n) for code, n in await reasons.fetchall()}
            tally.rejections = await _first(conn, job_id, "rejected")
        return tally


async def _first(conn: Any, job_id: str, condition: str) -> list[Failure]:
    """The first rows (by index) meeting ``condition``, a fixed SQL condition."""
    cur = conn.cursor(row_factory=class_row(Failure))
    await cur.execute(
        f"SELECT row, prompt_name, code, message FROM generation_rows WHERE job_id = %s AND {condition}"
        " ORDER BY row LIMIT %s",
        (job_id, FAILURES_SHOWN),
    )
    return list(await cur.fetchall())
