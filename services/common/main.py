"""The one entry point of every service process: settings, logs, tracing, serve."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from services.common.errors import DistilleryError
from services.common.logs import setup_logging
from services.common.server import RunningServer, serve_forever
from services.common.tracing import setup_tracing

S = TypeVar("S")


def run_service(name: str, load_settings: Callable[[], S], create: Callable[[S], Awaitable[RunningServer]]) -> None:
    setup_logging(name)
    log = logging.getLogger(f"distillery.{name}")
    try:
        settings: Any = load_settings()
    except DistilleryError as err:
        log.error("bad settings: %s", err.message)
        sys.exit(2)
    setup_logging(name, settings.server.log_level)
    setup_tracing(name, settings.server.tracing)

    async def main() -> None:
        running = await create(settings)
        await serve_forever(running, settings.server.shutdown_grace_s)

    try:
        asyncio.run(main())
    except DistilleryError as err:  # e.g. a dependency down at start
        log.error("cannot start: %s", err.message)
        sys.exit(1)
