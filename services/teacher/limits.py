"""How hard the teacher may push one provider: token buckets and the per-provider ``Limiter``.

``TokenBucket``   units refill at a steady rate up to a small burst capacity; ``acquire(n)``
                  waits, first come first served, until n units are there.
``Limiter``       one per provider, shared by every job of the teacher process: at most
                  ``concurrency`` requests in flight, ``requests_per_minute`` and
                  ``tokens_per_minute`` token buckets (0: no limit of that kind), and a
                  provider-wide ``pause`` when the provider says we are over its limit.

    async with limiter.slot(estimated_tokens) as slot:
        completion = await call(request)
        slot.settle(completion.input_tokens + completion.output_tokens)

A bucket holds about one second's worth of its per-minute rate, so throughput is smooth
and a provider's own per-minute limit is not tripped by an opening burst.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.teacher.settings import ProviderSettings


class TokenBucket:
    """``rate_per_s`` units a second, at most ``capacity`` saved up.

    ``acquire(n)`` with n above the capacity waits for a full bucket and then takes n,
    leaving the bucket in debt: later callers wait it off, so the average rate holds.
    """

    def __init__(self, rate_per_s: float, capacity: float, *, initial: float | None = None) -> None:
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._tokens = capacity if initial is None else min(initial, capacity)
        self._updated = time.monotonic()
        # asyncio.Lock wakes its waiters in arrival order: the queue is FIFO.
        self._turn = asyncio.Lock()

    @classmethod
    def per_minute(cls, per_minute: float) -> TokenBucket:
        """A bucket for a per-minute limit, holding one second's worth (at least 1)."""
        return cls(per_minute / 60.0, max(1.0, per_minute / 60.0))

    @property
    def available(self) -> float:
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now

    async def acquire(self, n: float) -> None:
        need = min(n, self.capacity)
        async with self._turn:
            while True:
                self._refill()
                if self._tokens >= need:
                    self._tokens -= n
                    return
                # Re-checked after the sleep: charge() or drain() may have moved the level meanwhile.
                await asyncio.sleep((need - self._tokens) / self.rate_per_s)

    def charge(self, n: float) -> None:
        """Take n more units now (an estimate fell short); the bucket may go into debt."""
        self._refill()
        self._tokens -= n

    def give_back(self, n: float) -> None:
        """Return n units (an estimate was too high), never above the capacity."""
        self._refill()
        self._tokens = min(self.capacity, self._tokens + n)

    def drain(self) -> None:
        """Empty the bucket (keeping any debt): after a pause it refills from nothing."""
        self._refill()
        self._tokens = min(self._tokens, 0.0)


class Slot:
    """One admitted request; ``settle`` corrects its token estimate with what it really used."""

    def __init__(self, tokens: TokenBucket | None, estimated_tokens: float) -> None:
        self._tokens = tokens
        self._estimate = estimated_tokens
        self._settled = False

    def settle(self, actual_tokens: float) -> None:
        if self._settled or self._tokens is None:
            return
        self._settled = True
        difference = actual_tokens - self._estimate
        if difference > 0:
            self._tokens.charge(difference)
        elif difference < 0:
            self._tokens.give_back(-difference)


class Limiter:
    """Concurrency, request rate and token rate of one provider, shared by all its jobs."""

    def __init__(self, concurrency: int, requests_per_minute: float = 0, tokens_per_minute: float = 0) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._in_flight = asyncio.Semaphore(concurrency)
        self._requests = TokenBucket.per_minute(requests_per_minute) if requests_per_minute > 0 else None
        self._tokens = TokenBucket.per_minute(tokens_per_minute) if tokens_per_minute > 0 else None
        self._paused_until = 0.0

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> Limiter:
        return cls(settings.concurrency, settings.requests_per_minute, settings.tokens_per_minute)

    def __repr__(self) -> str:
        return (
            f"Limiter(concurrency={self.concurrency}, requests_per_minute={self.requests_per_minute}, "
            f"tokens_per_minute={self.tokens_per_minute})"
        )

    def pause(self, seconds: float) -> None:
        """Hold every new request of this provider for ``seconds`` (it said we are over its limit)."""
        if seconds <= 0:
            return
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        for bucket in (self._requests, self._tokens):
            if bucket is not None:
                bucket.drain()

    @property
    def paused_for(self) -> float:
        """Seconds left of the current pause (0 when none)."""
        return max(0.0, self._paused_until - time.monotonic())

    async def _wait_unpaused(self) -> None:
        while (left := self.paused_for) > 0:
            await asyncio.sleep(left)

    @asynccontextmanager
    async def slot(self, estimated_tokens: float = 0) -> AsyncIterator[Slot]:
        """Wait for a free place, the end of any pause, and room in both buckets; held until the block ends.

        The buckets are waited on after the place is taken, so a request goes out as soon as
        its rate allows it, rather than queueing up rate already spent behind busy places.
        """
        async with self._in_flight:
            await self._wait_unpaused()
            if self._requests is not None:
                await self._requests.acquire(1)
            if self._tokens is not None:
                await self._tokens.acquire(estimated_tokens)
            # A pause that came in while this request waited on the buckets holds it too.
            await self._wait_unpaused()
            yield Slot(self._tokens, estimated_tokens)
