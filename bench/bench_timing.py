"""The real-clock speeds the tests used to bound, measured here instead (a test asserts behaviour only).

Each line measures its subject against a baseline taken in the same run and prints the ratio:

- limiter rate:   the request rate ``generate()`` reaches through a ``Limiter`` of 600 a minute after its
                  burst, against the configured 10/s (1.00 is exact; tests/test_engine.py checks the rate on
                  a virtual clock and only that real sleeps never end early)
- cancel:         cancelling ``generate()`` with 4 calls in flight, against cancelling one bare sleeping task
- progress hooks: ``ProgressPush.put`` with a trainer address that never answers, against a push that sends
                  nothing (the SFT recipe's hooks must only queue)
- timeout:        a provider call with a 0.5 s timeout to a server that answers after 2 minutes, against
                  the 0.5 s asked for
- parallel fake:  32 concurrent requests to the fake vendor server (0.4 s latency), against one request

``python -m bench.bench_timing`` runs it alone (a few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import statistics
import time
from functools import partial

from services.teacher.engine import Outcome, Task, generate
from services.teacher.limits import Limiter
from services.teacher.providers import openai_chat
from services.teacher.providers.base import Completion, Credentials, ProviderError, Request
from tests.provider_servers import ProviderServer

RATE_PER_MINUTE = 600
RATE_ROWS = 40
CANCEL_REPEATS = 20
PUTS = 5000
LATENCY_S = 0.4
PARALLEL = 32
TIMEOUT_S = 0.5


def request(row: int) -> Request:
    return Request(model="bench", messages=[{"role": "user", "content": f"q{row}"}], seed=row)


async def nothing(outcome: Outcome) -> None:
    pass


async def limiter_rate() -> float:
    """Requests a second after the bucket's burst (10 at once), through the real clock."""
    started: list[float] = []

    async def call(req: Request) -> Completion:
        started.append(time.perf_counter())
        return Completion(text="", tool_calls=[], input_tokens=1, output_tokens=1)

    limiter = Limiter(concurrency=50, requests_per_minute=RATE_PER_MINUTE)
    await generate((Task(r, request(r)) for r in range(RATE_ROWS)), call, limiter, nothing)
    after_burst = sorted(started)[10:]
    return (len(after_burst) - 1) / (after_burst[-1] - after_burst[0])


async def cancel_seconds() -> tuple[float, float]:
    """Median seconds to cancel generate() with 4 calls in flight, and to cancel one sleeping task."""
    engine, bare = [], []
    for _ in range(CANCEL_REPEATS):
        in_flight = 0

        async def call(req: Request) -> Completion:
            nonlocal in_flight
            in_flight += 1
            await asyncio.sleep(3600)
            raise AssertionError("never answered")

        rows = (Task(r, request(r)) for r in range(1000))
        job = asyncio.create_task(generate(rows, call, Limiter(4), nothing))
        while in_flight < 4:
            await asyncio.sleep(0)
        engine.append(await cancelled_in(job))
        sleeper = asyncio.create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)
        bare.append(await cancelled_in(sleeper))
    return statistics.median(engine), statistics.median(bare)


async def cancelled_in(task: asyncio.Task[object]) -> float:
    started = time.perf_counter()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return time.perf_counter() - started


def put_seconds() -> tuple[float, float]:
    """Seconds per ProgressPush.put to a trainer that never answers, and to no trainer at all."""
    from distillery.trainer.v1 import trainer_pb2
    from services.trainer.recipes.progress import ProgressPush

    logging.getLogger("services.trainer.recipes.progress").setLevel(logging.ERROR)  # the failed sends
    event = trainer_pb2.RunEvent(progress=trainer_pb2.Progress(step=1))
    with socket.socket() as silent:  # accepts connections and never answers: each send waits for its deadline
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        sending = ProgressPush("run_bench", f"127.0.0.1:{silent.getsockname()[1]}", "tok", min_interval_s=0.0)
        quiet = ProgressPush("run_bench")
        per_put = []
        for push in (sending, quiet):
            started = time.perf_counter()
            for _ in range(PUTS):
                push.put(event)
            per_put.append((time.perf_counter() - started) / PUTS)
        sending.close(timeout_s=0.5)
    return per_put[0], per_put[1]


async def timeout_seconds(server: ProviderServer) -> float:
    client = openai_chat.connect(Credentials(api_key="bench-key", base_url=server.base_url, timeout_s=TIMEOUT_S))
    try:
        await openai_chat.complete(client, request(0))  # opens the connection
        server.script({"delay": 120.0})
        started = time.perf_counter()
        try:
            await openai_chat.complete(client, request(1))
        except ProviderError as err:
            if err.kind != "timeout":
                raise
        return time.perf_counter() - started
    finally:
        await openai_chat.close(client)


async def parallel_seconds(server: ProviderServer) -> tuple[float, float]:
    """Seconds for PARALLEL concurrent requests, and for one."""
    client = openai_chat.connect(Credentials(api_key="bench-key", base_url=server.base_url, timeout_s=60))
    try:
        call = partial(openai_chat.complete, client)
        await call(request(0))  # warm up: the connection
        started = time.perf_counter()
        await call(request(1))
        one = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.gather(*(call(request(r)) for r in range(PARALLEL)))
        return time.perf_counter() - started, one
    finally:
        await openai_chat.close(client)


def main() -> None:
    rate = asyncio.run(limiter_rate())
    print(f"limiter rate:   {rate:6.2f} req/s against {RATE_PER_MINUTE / 60:.0f}/s configured: "
          f"ratio {rate / (RATE_PER_MINUTE / 60):.2f}")  # fmt: skip
    engine, bare = asyncio.run(cancel_seconds())
    print(f"cancel:         {engine * 1e3:6.2f} ms with 4 calls in flight, {bare * 1e3:.3f} ms for one task: "
          f"ratio {engine / bare:.1f}")  # fmt: skip
    sending, quiet = put_seconds()
    print(f"progress hooks: {sending * 1e6:6.2f} us per put to a silent trainer, {quiet * 1e6:.2f} us sending "
          f"nothing: ratio {sending / quiet:.1f}")  # fmt: skip
    with ProviderServer("openai") as server:
        waited = asyncio.run(timeout_seconds(server))
    print(f"timeout:        {waited:6.2f} s to time out against {TIMEOUT_S} s asked: ratio {waited / TIMEOUT_S:.2f}")
    with ProviderServer("openai", latency_s=LATENCY_S) as server:
        many, one = asyncio.run(parallel_seconds(server))
    print(f"parallel fake:  {many:6.2f} s for {PARALLEL} at once, {one:.2f} s for one: ratio {many / one:.2f} "
          f"({PARALLEL} would be one after the other)")  # fmt: skip


if __name__ == "__main__":
    main()
