"""The generation engine: many rows through one provider call, within its limits, with retries.

``generate(tasks, call, limiter, on_outcome)`` runs ``workers`` coroutines that each take the
next ``Task`` from the (possibly lazy, very long) iterable, call the provider through a
``Limiter`` slot, and await ``on_outcome`` with the row's ``Outcome`` once it is final:

- retryable ``ProviderError`` kinds (429, 529, 5xx, timeouts...) are retried with exponential
  backoff and full jitter, waiting at least the provider's retry-after; a 429 that carries
  one pauses the whole provider for that long. After ``max_attempts`` the row fails with
  code ``retries_exhausted``;
- row-fatal kinds (input too long, refused) fail that row at once, code = the kind;
- job-fatal kinds (auth, spend limit, invalid request) stop every worker, cancel the calls
  in flight and raise ``JobStopped``;
- ``on_outcome`` may raise ``TooManyFailures`` (the job's failed rows passed its limit, so no
  row can save it): the same, no other call starts and the calls in flight are cancelled;
- any other exception is a bug: the workers are cancelled and it propagates.

Logs name the row, the error kind, status and wait; never a request's content or a key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from services.teacher.limits import Limiter
from services.teacher.providers.base import Completion, ProviderError, Request

log = logging.getLogger(__name__)

RETRIES_EXHAUSTED = "retries_exhausted"


@dataclass(frozen=True)
class Task:
    row: int
    request: Request


@dataclass(frozen=True)
class Outcome:
    row: int
    # Set when the row succeeded.
    completion: Completion | None
    # Else why it failed: "retries_exhausted", "input_too_long", "refused", ...
    code: str = ""
    message: str = ""
    attempts: int = 1
    # The provider's last error kind when the row failed (for "retries_exhausted": what kept failing).
    error_kind: str = ""


class JobStopped(Exception):
    """A job-fatal ``ProviderError`` (auth, spend limit, invalid request) stopped the job."""

    def __init__(self, error: ProviderError) -> None:
        super().__init__(f"{error.kind}: {error.message}")
        self.error = error


class TooManyFailures(Exception):
    """Raised by a job's ``on_outcome`` once its failed rows pass the job's limit: the job can no
    longer succeed, so ``generate`` starts no other request and cancels those in flight."""

    def __init__(self, failed: int, allowed: int) -> None:
        super().__init__(f"{failed} rows failed, more than the {allowed} allowed")
        self.failed, self.allowed = failed, allowed


def estimate_tokens(request: Request) -> int:
    """What the request may cost in tokens: its text at ~4 characters a token, plus its output budget."""
    chars = sum(_chars(message) for message in request.messages)
    if request.tools:
        chars += len(json.dumps(request.tools))
    return chars // 4 + request.max_output_tokens


def _chars(message: dict[str, Any]) -> int:
    content = message.get("content")
    if isinstance(content, str):
        chars = len(content)
    elif isinstance(content, list):  # content parts: count the text ones
        chars = sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
    else:
        chars = 0
    for tool_call in message.get("tool_calls") or ():
        chars += len(tool_call.get("name") or "") + len(tool_call.get("arguments") or "")
    return chars


@dataclass
class _Run:
    call: Callable[[Request], Awaitable[Completion]]
    limiter: Limiter
    on_outcome: Callable[[Outcome], Awaitable[None]]
    max_attempts: int
    base_backoff_s: float
    max_backoff_s: float
    rng: random.Random
    # Set when one worker met a job-fatal error: no other worker starts a call after it.
    stopped: bool = False

    def backoff(self, attempt: int, error: ProviderError) -> float:
        """The wait after failed try number ``attempt`` (1-based): full jitter under a capped exponential."""
        wait = self.rng.uniform(0.0, min(self.max_backoff_s, self.base_backoff_s * 2 ** (attempt - 1)))
        if error.retry_after_s is not None and error.retry_after_s > 0:
            wait = max(wait, error.retry_after_s)
        return wait

    async def work(self, tasks: Iterator[Task]) -> None:
        # The iterator is shared: next() runs between awaits, so each task goes to one worker.
        try:
            for task in tasks:
                outcome = await self.run_task(task)
                await self.on_outcome(outcome)
        except BaseException:
            # Whatever ends a worker early (a job-fatal error, too many failures, a bug, a cancel) ends
            # the job: no other worker starts a call between now and generate() cancelling them.
            self.stopped = True
            raise

    async def run_task(self, task: Task) -> Outcome:
        estimate = estimate_tokens(task.request)
        attempt = 0
        while True:
            attempt += 1
            async with self.limiter.slot(estimate) as slot:
                if self.stopped:
                    raise asyncio.CancelledError
                try:
                    completion = await self.call(task.request)
                except ProviderError as e:
                    error = e
                else:
                    actual = completion.input_tokens + completion.output_tokens
                    if actual > 0:  # 0: the provider did not say; the estimate stands
                        slot.settle(actual)
                    return Outcome(task.row, completion, attempts=attempt)

            if error.job_fatal:
                self.stopped = True
                log.warning("row %d: %s (status %d): the job stops", task.row, error.kind, error.status)
                raise JobStopped(error)
            if not error.retryable:
                log.info("row %d: %s (status %d): the row fails", task.row, error.kind, error.status)
                return Outcome(task.row, None, error.kind, error.message, attempt, error.kind)
            if attempt >= self.max_attempts:
                log.warning(
                    "row %d: %s (status %d) on try %d of %d: retries exhausted",
                    task.row, error.kind, error.status, attempt, self.max_attempts,
                )  # fmt: skip
                return Outcome(task.row, None, RETRIES_EXHAUSTED, error.message, attempt, error.kind)

            wait = self.backoff(attempt, error)
            if error.retry_after_s and (error.status == 429 or error.kind == "rate_limited"):
                self.limiter.pause(error.retry_after_s)
            log.info(
                "row %d: %s (status %d) on try %d of %d, retrying in %.2fs",
                task.row, error.kind, error.status, attempt, self.max_attempts, wait,
            )  # fmt: skip
            await asyncio.sleep(wait)


async def generate(
    tasks: Iterable[Task],
    call: Callable[[Request], Awaitable[Completion]],
    limiter: Limiter,
    on_outcome: Callable[[Outcome], Awaitable[None]],
    *,
    max_attempts: int = 6,
    base_backoff_s: float = 0.5,
    max_backoff_s: float = 60.0,
    workers: int | None = None,
    rng: random.Random | None = None,
) -> None:
    """Run every task through ``call`` and await ``on_outcome`` once per finished row.

    ``tasks`` is consumed lazily, one task per free worker. Raises ``JobStopped`` on a
    job-fatal provider error, and ``on_outcome``'s ``TooManyFailures``, after cancelling every
    other worker (``on_outcome`` is not called for the rows they held). Cancelling ``generate``
    cancels the workers first.
    """
    run = _Run(call, limiter, on_outcome, max(1, max_attempts), base_backoff_s, max_backoff_s, rng or random.Random())
    shared = iter(tasks)
    running = [asyncio.create_task(run.work(shared)) for _ in range(workers or limiter.concurrency)]
    try:
        await asyncio.wait(running, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        # Normal end: all done, nothing to cancel. Else (an error, or generate() itself
        # cancelled) the rest are cancelled and awaited so that none outlives this call.
        for worker in running:
            worker.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    for worker in running:
        if worker.done() and not worker.cancelled() and (error := worker.exception()) is not None:
            raise error


async def complete_one(
    request: Request,
    call: Callable[[Request], Awaitable[Completion]],
    limiter: Limiter,
    *,
    max_attempts: int,
    max_backoff_s: float,
) -> Outcome:
    """One request that is not a job's row (a DescribeTool call), through the provider's shared limiter
    with a job row's retries. The outcome has the completion, or the error of its last try; a job-fatal
    error (auth, spend limit, invalid request) is raised as the ``ProviderError`` it is."""
    outcomes: list[Outcome] = []

    async def keep(outcome: Outcome) -> None:
        outcomes.append(outcome)

    try:
        await generate([Task(0, request)], call, limiter, keep, max_attempts=max_attempts,
                       max_backoff_s=max_backoff_s, workers=1)  # fmt: skip
    except JobStopped as stopped:
        raise stopped.error from None
    return outcomes[0]
