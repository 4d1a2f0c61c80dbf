"""How close the teacher's generation engine comes to a provider's limits.

Starts a fake OpenAI-compatible provider on loopback (``tests/provider_servers.py``) that
answers each request after 100 ms and enforces 1,200 requests a minute with 429s, then
measures, in the same run, through the real openai adapter:

- sequential: one request at a time (the rate a plain loop gets)
- engine:     ``generate()`` over 2,000 rows with a ``Limiter`` of concurrency 32 and
              1,200 requests a minute, the settings a deployment would give this provider

and prints both rates, the ideal rate min(concurrency / latency, limit), the 429s the
engine received, and the ratio engine / ideal. At 20 requests a second the engine run
takes about 100 s; ``python -m bench.bench_teacher --requests 200`` is a quick one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from functools import partial

from services.teacher.engine import Outcome, Task, generate
from services.teacher.limits import Limiter
from services.teacher.providers import openai_chat
from services.teacher.providers.base import Completion, Credentials, ProviderError, Request
from tests.provider_servers import ProviderServer

REQUESTS = 2000
SEQUENTIAL = 30
LATENCY_S = 0.1
CONCURRENCY = 32
REQUESTS_PER_MINUTE = 1200


def request(row: int) -> Request:
    messages = [
        {"role": "system", "content": "You are a support agent for a billing product. Answer in two sentences."},
        {"role": "user", "content": f"Hi team, invoice #{row} shows the wrong total. Can you help?"},
    ]
    return Request(model="bench-model", messages=messages, max_output_tokens=128)


async def measure(base_url: str, requests: int) -> tuple[float, float, int, int]:
    """(sequential rate, engine rate, rows that succeeded, 429s received)."""
    client = openai_chat.connect(Credentials(api_key="bench-key", base_url=base_url, timeout_s=30))
    try:
        call = partial(openai_chat.complete, client)
        limited = 0

        async def counted(req: Request) -> Completion:
            nonlocal limited
            try:
                return await call(req)
            except ProviderError as e:
                limited += e.status == 429
                raise

        started = time.perf_counter()
        for row in range(SEQUENTIAL):
            await call(request(row))
        sequential = SEQUENTIAL / (time.perf_counter() - started)

        succeeded = 0

        async def on_outcome(outcome: Outcome) -> None:
            nonlocal succeeded
            succeeded += outcome.completion is not None

        limiter = Limiter(CONCURRENCY, REQUESTS_PER_MINUTE)
        started = time.perf_counter()
        await generate((Task(row, request(row)) for row in range(requests)), counted, limiter, on_outcome)
        engine = requests / (time.perf_counter() - started)
        return sequential, engine, succeeded, limited
    finally:
        await openai_chat.close(client)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=REQUESTS, help=f"rows the engine generates ({REQUESTS})")
    args = parser.parse_args([] if argv is None else argv)

    with ProviderServer("openai", latency_s=LATENCY_S, requests_per_minute=REQUESTS_PER_MINUTE) as server:
        sequential, engine, succeeded, limited = asyncio.run(measure(server.base_url, args.requests))
    if succeeded != args.requests:
        raise SystemExit(f"only {succeeded} of {args.requests} rows succeeded")
    ideal = min(CONCURRENCY / LATENCY_S, REQUESTS_PER_MINUTE / 60)
    print(f"requests: {args.requests} (provider latency {LATENCY_S * 1000:.0f} ms, limit {REQUESTS_PER_MINUTE}/min)")
    print(f"sequential rate: {sequential:.1f} req/s")
    print(f"engine rate:     {engine:.1f} req/s (concurrency {CONCURRENCY}, {REQUESTS_PER_MINUTE}/min)")
    print(f"ideal:           {ideal:.1f} req/s")
    print(f"429s received:   {limited}")
    print(f"teacher throughput / ideal ratio: {engine / ideal:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
