"""The generation engine and its limits, in real asyncio.

``call`` here is a plain async function standing in for a provider adapter: it returns a
Completion or raises the ProviderError an adapter would. The last test drives the real
openai adapter against a fake provider server at the HTTP wire.

No test here bounds how fast something happens on the real clock (a loaded machine is slow
at any bound): real sleeps are only checked never to end early, rates are checked on a
virtual clock, and a cancel only has to beat the hour its calls would take.
``bench/bench_timing.py`` measures the real-clock speeds.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from functools import partial

import pytest

from services.teacher import limits
from services.teacher.engine import RETRIES_EXHAUSTED, JobStopped, Outcome, Task, estimate_tokens, generate
from services.teacher.limits import Limiter, TokenBucket
from services.teacher.providers import openai_chat
from services.teacher.providers.base import Completion, Credentials, ProviderError, Request
from tests.provider_servers import ProviderServer

REQUEST = Request(model="m", messages=[{"role": "user", "content": "x" * 400}], max_output_tokens=100)


def tasks(n: int) -> list[Task]:
    return [Task(row, REQUEST) for row in range(n)]


def done(text: str = "ok") -> Completion:
    return Completion(text=text, tool_calls=[], input_tokens=10, output_tokens=5)


class Record:
    """What the fake provider saw and what the engine reported."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []  # (monotonic time, row) of every call started
        self.outcomes: list[Outcome] = []
        self.in_flight = 0
        self.peak = 0
        self.cancelled: list[int] = []

    async def on_outcome(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def rows(self) -> Counter[int]:
        return Counter(o.row for o in self.outcomes)


class VirtualClock:
    """Stands in for ``time`` and ``asyncio`` inside ``services.teacher.limits``: its clock moves only when
    the limiter sleeps, by exactly the time asked, so rates are exact however busy the machine is.
    (Right for sleeps that never overlap, as a bucket's, which wait their turn one at a time.)"""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        # At least a nanosecond: a wait computed as a rounding error must still move the clock on.
        self.now += max(seconds, 1e-9)
        await asyncio.sleep(0)

    def __getattr__(self, name: str) -> object:  # Lock, Semaphore: the real ones
        return getattr(asyncio, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    virtual = VirtualClock()
    monkeypatch.setattr(limits, "time", virtual)
    monkeypatch.setattr(limits, "asyncio", virtual)
    return virtual


def provider(
    record: Record, behave: Callable[[int, int], Awaitable[Completion]], now: Callable[[], float] = time.monotonic
) -> Callable[[Request], Awaitable[Completion]]:
    """A call that records each start (at ``now()``) and runs ``behave(row, try number)``; the row rides in the
    request's seed."""
    tries: Counter[int] = Counter()

    async def call(request: Request) -> Completion:
        row = request.seed or 0
        tries[row] += 1
        record.calls.append((now(), row))
        record.in_flight += 1
        record.peak = max(record.peak, record.in_flight)
        try:
            return await behave(row, tries[row])
        except asyncio.CancelledError:
            record.cancelled.append(row)
            raise
        finally:
            record.in_flight -= 1

    return call


def seeded(n: int) -> Iterator[Task]:
    for row in range(n):
        yield Task(row, Request(model="m", messages=[{"role": "user", "content": f"q{row}"}], seed=row))


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(30):  # no extra task, so the tests can count the ones left
            await coro

    asyncio.run(bounded())


def test_every_row_finishes_once_and_concurrency_holds() -> None:
    record = Record()

    async def behave(row: int, attempt: int) -> Completion:
        await asyncio.sleep(random.uniform(0, 0.003))
        return done(f"answer {row}")

    async def main() -> None:
        await generate(seeded(300), provider(record, behave), Limiter(concurrency=7), record.on_outcome)

    run(main())
    assert record.rows() == Counter(range(300))
    assert all(o.completion and o.completion.text == f"answer {o.row}" and o.attempts == 1 for o in record.outcomes)
    assert record.peak == 7  # reached, never exceeded


def test_more_workers_than_concurrency_still_hold_the_limit() -> None:
    record = Record()

    async def behave(row: int, attempt: int) -> Completion:
        await asyncio.sleep(0.002)
        return done()

    async def main() -> None:
        await generate(seeded(100), provider(record, behave), Limiter(concurrency=3), record.on_outcome, workers=20)

    run(main())
    assert record.rows() == Counter(range(100))
    assert record.peak == 3


def test_requests_per_minute_hold_the_rate(clock: VirtualClock) -> None:
    record = Record()

    async def behave(row: int, attempt: int) -> Completion:
        return done()

    async def main() -> None:
        limiter = Limiter(concurrency=50, requests_per_minute=600)  # 10/s, a burst of 10
        await generate(seeded(25), provider(record, behave, clock.monotonic), limiter, record.on_outcome)

    run(main())
    assert record.rows() == Counter(range(25))
    times = [t for t, _ in sorted(record.calls)]
    # The first 10 go at once (the bucket's one second of burst), the next 15 one every 0.1 s: 10/s.
    assert times[:10] == [0.0] * 10
    assert times[10:] == pytest.approx([0.1 * k for k in range(1, 16)])


def test_requests_per_minute_never_go_faster_on_the_real_clock() -> None:
    record = Record()

    async def behave(row: int, attempt: int) -> Completion:
        return done()

    async def main() -> None:
        limiter = Limiter(concurrency=50, requests_per_minute=600)  # 10/s, a burst of 10
        await generate(seeded(25), provider(record, behave), limiter, record.on_outcome)

    run(main())
    assert record.rows() == Counter(range(25))
    times = sorted(t for t, _ in record.calls)
    # Real sleeps never end early: the 15 after the burst wait 15 refills at 10/s, 1.5 s, however fast the machine.
    assert times[24] - times[0] >= 1.49


def test_retry_after_is_honoured_and_pauses_the_provider() -> None:
    record = Record()
    limited_at: list[float] = []

    async def behave(row: int, attempt: int) -> Completion:
        await asyncio.sleep(0.01)
        if row == 0 and attempt == 1:
            limited_at.append(time.monotonic())
            raise ProviderError("rate_limited", "slow down", status=429, retry_after_s=0.3)
        return done()

    async def main() -> None:
        await generate(seeded(20), provider(record, behave), Limiter(concurrency=2), record.on_outcome)

    run(main())
    assert record.rows() == Counter(range(20))
    [row0] = [o for o in record.outcomes if o.row == 0]
    assert row0.attempts == 2 and row0.completion is not None
    retried = [t for t, row in record.calls if row == 0][1]
    assert retried >= limited_at[0] + 0.3
    # Every call that started after the 429 waited out the provider-wide pause.
    later = [t for t, _ in record.calls if t > limited_at[0]]
    assert later and min(later) >= limited_at[0] + 0.3


class MaxRandom(random.Random):
    """A real RNG whose uniform(a, b) records its bounds and returns b: the longest wait full jitter allows."""

    def __init__(self) -> None:
        super().__init__(1)
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return b


def test_full_jitter_backoff_is_capped_and_retries_run_out() -> None:
    record = Record()
    rng = MaxRandom()

    async def behave(row: int, attempt: int) -> Completion:
        raise ProviderError("server_error", f"upstream failed (try {attempt})", status=503)

    async def main() -> None:
        await generate(
            seeded(1), provider(record, behave), Limiter(concurrency=1), record.on_outcome,
            max_attempts=6, base_backoff_s=0.01, max_backoff_s=0.05, rng=rng,
        )  # fmt: skip

    run(main())
    [outcome] = record.outcomes
    assert (outcome.code, outcome.attempts, outcome.completion) == (RETRIES_EXHAUSTED, 6, None)
    assert outcome.message == "upstream failed (try 6)"
    assert len(record.calls) == 6
    # wait ~ uniform(0, min(cap, base * 2**k)): 0.01, 0.02, 0.04, then the 0.05 cap.
    assert rng.bounds == [(0.0, 0.01), (0.0, 0.02), (0.0, 0.04), (0.0, 0.05), (0.0, 0.05)]
    gaps = [b[0] - a[0] for a, b in zip(record.calls, record.calls[1:], strict=False)]
    assert all(gap >= wait for gap, (_, wait) in zip(gaps, rng.bounds, strict=True))


def test_full_jitter_draws_below_the_cap() -> None:
    record = Record()
    waits: list[float] = []

    class Recording(random.Random):
        def uniform(self, a: float, b: float) -> float:
            waits.append(value := super().uniform(a, b))
            assert 0 <= value <= b <= 0.02
            return value

    async def behave(row: int, attempt: int) -> Completion:
        raise ProviderError("overloaded", "busy", status=529)

    async def main() -> None:
        await generate(
            seeded(20), provider(record, behave), Limiter(concurrency=20), record.on_outcome,
            max_attempts=4, base_backoff_s=0.01, max_backoff_s=0.02, rng=Recording(5),
        )  # fmt: skip

    run(main())
    assert len(waits) == 20 * 3
    assert len(set(waits)) == len(waits)  # jittered, not one wait for all
    assert {o.code for o in record.outcomes} == {RETRIES_EXHAUSTED}


@pytest.mark.parametrize("kind", ["auth", "spend_limit", "invalid_request"])
def test_job_fatal_stops_every_worker(kind: str) -> None:
    record = Record()
    stopped_at: list[float] = []

    async def behave(row: int, attempt: int) -> Completion:
        if row == 20:
            await asyncio.sleep(0.005)  # rows 21-23 are in flight by now
            stopped_at.append(time.monotonic())
            raise ProviderError(kind, "no", status=401)
        await asyncio.sleep(0.02)
        return done()

    async def main() -> None:
        with pytest.raises(JobStopped) as raised:
            await generate(seeded(1000), provider(record, behave), Limiter(concurrency=4), record.on_outcome)
        assert raised.value.error.kind == kind
        assert asyncio.all_tasks() == {asyncio.current_task()}  # no worker left behind

    run(main())
    assert [row for _, row in record.calls].count(20) == 1  # never retried
    assert not [t for t, _ in record.calls if t > stopped_at[0]]  # nothing started after it
    assert record.cancelled  # the calls in flight were cancelled...
    assert not set(record.cancelled) & set(record.rows())  # ...and not reported
    assert max(record.rows()) < 30


def test_row_fatal_fails_only_that_row() -> None:
    record = Record()

    async def behave(row: int, attempt: int) -> Completion:
        if row == 3:
            raise ProviderError("input_too_long", "prompt is 300000 tokens, the model takes 200000", status=400)
        if row == 5:
            raise ProviderError("refused", "the model declined")
        return done()

    async def main() -> None:
        await generate(seeded(10), provider(record, behave), Limiter(concurrency=3), record.on_outcome)

    run(main())
    assert record.rows() == Counter(range(10))
    by_row = {o.row: o for o in record.outcomes}
    assert (by_row[3].code, by_row[3].attempts, by_row[3].completion) == ("input_too_long", 1, None)
    assert "200000" in by_row[3].message
    assert by_row[5].code == "refused"
    assert all(by_row[r].completion is not None and by_row[r].code == "" for r in range(10) if r not in (3, 5))
    assert len(record.calls) == 10


def test_a_bug_in_call_propagates_and_cancels_the_rest() -> None:
    record = Record()

    async def behave(row: int, attempt: int) -> Completion:
        if row == 7:
            raise KeyError("choices")
        await asyncio.sleep(0.05)
        return done()

    async def main() -> None:
        with pytest.raises(KeyError):
            await generate(seeded(100), provider(record, behave), Limiter(concurrency=4), record.on_outcome)
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(main())
    assert record.cancelled and len(record.calls) < 20


def test_a_lazy_generator_is_consumed_one_task_per_worker() -> None:
    pulled = 0
    finished = 0
    ahead = 0

    def lazy(n: int) -> Iterator[Task]:
        nonlocal pulled
        for row in range(n):
            pulled += 1
            yield Task(row, REQUEST)

    async def call(request: Request) -> Completion:
        await asyncio.sleep(0)  # a real call suspends: the workers take turns
        return done()

    async def on_outcome(outcome: Outcome) -> None:
        nonlocal finished, ahead
        finished += 1
        ahead = max(ahead, pulled - finished)

    async def main() -> None:
        await generate(lazy(100_000), call, Limiter(concurrency=8), on_outcome)

    run(main())
    assert pulled == finished == 100_000
    assert 1 < ahead <= 8  # the workers share the tasks, and never take more than one each


def test_cancelling_generate_stops_promptly() -> None:
    record = Record()

    async def behave(row: int, attempt: int) -> Completion:
        await asyncio.sleep(3600)
        return done()

    async def main() -> None:
        job = asyncio.create_task(generate(seeded(1000), provider(record, behave), Limiter(4), record.on_outcome))
        while len(record.calls) < 4:  # the 4 calls are in flight
            await asyncio.sleep(0.01)
        job.cancel()
        # The calls in flight would take an hour: a cancel that waited for any of them would never end in 20 s
        # (a bound no busy machine reaches; ``run`` gives the whole test 30 s).
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(20):
                await job
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(main())
    assert sorted(record.cancelled) == [0, 1, 2, 3] and not record.outcomes


def test_token_bucket_larger_than_capacity_and_fifo() -> None:
    async def main() -> list[int]:
        bucket = TokenBucket(rate_per_s=100, capacity=10)
        order: list[int] = []

        async def take(k: int, n: float) -> None:
            await bucket.acquire(n)
            order.append(k)

        started = time.monotonic()
        # 50 > capacity goes through once the bucket is full, leaving 40 of debt for the rest.
        await asyncio.gather(take(0, 50), *(take(k, 1) for k in range(1, 6)))
        assert time.monotonic() - started >= 0.4  # the debt was paid off at 100/s before k=1 went
        return order

    assert asyncio.run(main()) == [0, 1, 2, 3, 4, 5]


def test_tokens_per_minute_settle_with_actual_use(clock: VirtualClock) -> None:
    async def main() -> None:
        limiter = Limiter(concurrency=4, tokens_per_minute=60_000)  # 1000/s, a burst of 1000
        bucket = limiter._tokens
        assert bucket is not None
        async with limiter.slot(800) as slot:
            assert bucket.available == 200  # the clock stands still: nothing refills between the steps
            slot.settle(100)  # it used far less: 700 come back
        assert bucket.available == 900
        async with limiter.slot(100) as slot:
            slot.settle(600)  # it used more: the difference is charged
        assert bucket.available == 300
        clock.now += 0.5  # half a second refills 500, up to the capacity
        assert bucket.available == 800

    asyncio.run(main())


def test_estimate_counts_characters_and_the_output_budget() -> None:
    assert estimate_tokens(REQUEST) == 400 // 4 + 100


def test_through_the_openai_adapter_a_429_and_a_500_are_retried() -> None:
    record = Record()
    with ProviderServer("openai") as server:
        server.script({"status": 429, "retry_after": 0.2}, {"status": 500})

        async def main() -> None:
            client = openai_chat.connect(Credentials(api_key="sk-test-engine", base_url=server.base_url))
            try:
                call = partial(openai_chat.complete, client)
                await generate(seeded(20), call, Limiter(concurrency=4, requests_per_minute=6000), record.on_outcome)
            finally:
                await openai_chat.close(client)

        started = time.monotonic()
        run(main())
        elapsed = time.monotonic() - started
        statuses = Counter(c.status for c in server.calls)

    assert record.rows() == Counter(range(20))
    assert all(o.completion is not None and o.completion.text.endswith(f"q{o.row}") for o in record.outcomes)
    assert sorted(o.attempts for o in record.outcomes) == [1] * 18 + [2, 2]
    assert statuses == {200: 20, 429: 1, 500: 1}
    assert elapsed >= 0.2  # the 429's retry-after held the provider
