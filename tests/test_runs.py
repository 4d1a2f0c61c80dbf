"""The run state machine in PostgreSQL, and the run API over gRPC (get, list, cancel, watch)."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import pytest
from test_services import create_run

from distillery.trainer.v1 import trainer_pb2 as pb
from services.common import db
from services.common.errors import FailedPrecondition
from services.trainer import runs

ORDER = [
    pb.RUN_STATE_QUEUED, pb.RUN_STATE_VALIDATING, pb.RUN_STATE_GENERATING, pb.RUN_STATE_TRAINING,
    pb.RUN_STATE_EVALUATING, pb.RUN_STATE_REGISTERING, pb.RUN_STATE_SUCCEEDED,
]  # fmt: skip


def test_transitions_follow_the_lifecycle():
    for source, target in itertools.pairwise(ORDER):
        assert runs.allowed(source, target)
    assert runs.allowed(pb.RUN_STATE_VALIDATING, pb.RUN_STATE_TRAINING)  # no generation for fine-tuning
    assert not runs.allowed(pb.RUN_STATE_QUEUED, pb.RUN_STATE_TRAINING)  # no skipping validation
    assert not runs.allowed(pb.RUN_STATE_TRAINING, pb.RUN_STATE_VALIDATING)  # no going back
    for state in ORDER[:-1]:
        assert runs.allowed(state, pb.RUN_STATE_FAILED) and runs.allowed(state, pb.RUN_STATE_CANCELLED)
    for final in runs.FINAL:  # absorbing
        assert not any(runs.allowed(final, target) for target in pb.RunState.values())
    # Pausing: only a TRAINING run pauses, and a paused one only trains again (or ends FAILED / CANCELLED).
    paused = pb.RUN_STATE_PAUSED
    assert runs.allowed(pb.RUN_STATE_TRAINING, paused) and runs.allowed(paused, pb.RUN_STATE_TRAINING)
    assert runs.allowed(paused, pb.RUN_STATE_CANCELLED) and runs.allowed(paused, pb.RUN_STATE_FAILED)
    assert [s for s in ORDER if s != pb.RUN_STATE_TRAINING and runs.allowed(s, paused)] == []
    assert not runs.allowed(paused, pb.RUN_STATE_EVALUATING) and paused not in runs.FINAL
    assert not runs.job_may_go_on(paused) and runs.job_may_go_on(pb.RUN_STATE_TRAINING)


async def walk(services, tenant_id: str, run_id: str, states: list[int]) -> list[int]:
    pool = await db.open_pool(services.postgres_url, "trainer", max_size=2)
    try:
        seen = []
        for state in states:
            seen.append((await runs.transition(pool, tenant_id, run_id, state)).state)
        return seen
    finally:
        await pool.close()


def test_the_same_idempotency_key_gives_the_same_run(services, make_tenant):
    tenant = make_tenant()
    first = services.loop.run(create_run(services, tenant.tenant_id, key="nightly-1"))
    again = services.loop.run(create_run(services, tenant.tenant_id, key="nightly-1"))
    other = services.loop.run(create_run(services, tenant.tenant_id, key="nightly-2"))
    someone_else = services.loop.run(create_run(services, make_tenant().tenant_id, key="nightly-1"))
    assert first.id == again.id
    assert len({first.id, other.id, someone_else.id}) == 3


def test_watch_streams_history_and_ends_at_a_final_state(services, make_tenant, client_for):
    tenant = make_tenant()
    client = client_for(tenant)
    run = services.loop.run(create_run(services, tenant.tenant_id))
    path = [pb.RUN_STATE_VALIDATING, pb.RUN_STATE_TRAINING, pb.RUN_STATE_EVALUATING]
    assert services.loop.run(walk(services, tenant.tenant_id, run.id, path)) == path

    cancelled = client.trainer.CancelRun(pb.CancelRunRequest(id=run.id))
    assert cancelled.state == pb.RUN_STATE_CANCELLED
    with pytest.raises(grpc.RpcError) as err:
        client.trainer.CancelRun(pb.CancelRunRequest(id=run.id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "final states are absorbing" in err.value.details()

    events = list(client.trainer.WatchRun(pb.WatchRunRequest(id=run.id), timeout=10))
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5]
    assert [e.state_change.to_state for e in events] == [pb.RUN_STATE_QUEUED, *path, pb.RUN_STATE_CANCELLED]
    assert events[-1].state_change.from_state == pb.RUN_STATE_EVALUATING
    resumed = list(client.trainer.WatchRun(pb.WatchRunRequest(id=run.id, after_sequence=3), timeout=10))
    assert [e.sequence for e in resumed] == [4, 5]

    listed = client.trainer.ListRuns(pb.ListRunsRequest(state=pb.RUN_STATE_CANCELLED)).runs
    assert [r.id for r in listed] == [run.id]
    assert client.trainer.GetRun(pb.GetRunRequest(id=run.id)).student_model == "tiny"


def test_a_final_run_cannot_move(services, make_tenant):
    tenant = make_tenant()
    run = services.loop.run(create_run(services, tenant.tenant_id))
    services.loop.run(walk(services, tenant.tenant_id, run.id, [pb.RUN_STATE_FAILED]))
    with pytest.raises(FailedPrecondition):
        services.loop.run(walk(services, tenant.tenant_id, run.id, [pb.RUN_STATE_VALIDATING]))


def test_a_lease_keeps_a_run_to_one_driver_until_it_lapses_or_is_given_back(services):
    from services.trainer.server import MIGRATIONS

    async def leases():
        # A schema of its own, out of sight of the running trainer's supervisor.
        await db.migrate(services.postgres_url, "trainer_leases", MIGRATIONS)
        pool = await db.open_pool(services.postgres_url, "trainer_leases", max_size=2)
        try:
            run, _ = await runs.create(pool, runs.Run(
                id=runs.new_run_id(), tenant_id="ten_x", idempotency_key="", path=3, mode=1, state=0, request={},
                created_at=None, updated_at=None,  # type: ignore[arg-type]
            ))  # fmt: skip
            seen = [await runs.claim(pool, run.id, "a", 0.5), await runs.claim(pool, run.id, "b", 0.5)]
            seen += [run.id in {r for r, _ in await runs.unclaimed(pool)}]
            await asyncio.sleep(0.7)  # "a" died: its lease lapses
            seen += [run.id in {r for r, _ in await runs.unclaimed(pool)}, await runs.claim(pool, run.id, "b", 60)]
            await runs.let_go(pool, [run.id], "b")  # given back at its shutdown
            seen += [await runs.claim(pool, run.id, "a", 60)]
            await runs.transition(pool, run.tenant_id, run.id, pb.RUN_STATE_CANCELLED)
            seen += [await runs.claim(pool, run.id, "a", 60)]  # final runs are nobody's
            return seen
        finally:
            await pool.close()

    assert services.loop.run(leases()) == [True, False, False, True, True, True, False]
