"""Server bootstrap shared by the four services.

``start_server`` builds a grpc.aio server with, outermost first: OpenTelemetry
tracing, error mapping and authentication by the service's access table; adds grpc health checking and
reflection; binds and starts it. ``serve_forever`` waits for SIGTERM/SIGINT,
marks the server NOT_SERVING and stops it gracefully, then runs the cleanups.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import auth, tracing
from services.common.errors import Unavailable
from services.common.interceptors import AuthInterceptor, ErrorInterceptor

log = logging.getLogger("distillery.server")

Cleanup = Callable[[], Awaitable[None]]
# What of a service's dependencies cannot be reached now (``Backends.problems``); empty when all can.
DependencyCheck = Callable[[], Awaitable[list[str]]]
HEALTH_INTERVAL_S = 2.0
# The largest request a service takes, unless it names its own (start_server).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    service_names: list[str]
    cleanups: list[Cleanup] = field(default_factory=list)
    monitor: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self, grace_s: float = 5.0) -> None:
        if self.monitor is not None:
            self.monitor.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        for cleanup in reversed(self.cleanups):
            try:
                await cleanup()
            except Exception:
                log.exception("cleanup failed during shutdown")


async def start_server(
    *,
    address: str,
    register: Callable[[grpc.aio.Server], list[str]],
    access: auth.AccessTable,
    resolve_key: auth.KeyResolver,
    service_token: str = "",
    is_admin_token: auth.AdminCheck | None = None,
    verify_run: auth.RunVerifier | None = None,
    cleanups: list[Cleanup] | None = None,
    dependencies: DependencyCheck | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> RunningServer:
    """``register`` adds the servicers and returns their full service names.

    ``access`` is the service's access table; ``is_admin_token`` and ``verify_run`` check
    the tokens only some services take (the registry's admin token, the trainer's run tokens).
    ``dependencies`` is asked every ``HEALTH_INTERVAL_S``: while it names a problem, the
    service's health is NOT_SERVING (``distillery status`` shows it), and SERVING again after.
    ``max_message_bytes`` is the largest request it takes (the registry's takes a clip to transcribe).
    """
    auth_interceptor = AuthInterceptor([access], resolve_key, service_token, is_admin_token, verify_run)
    server = grpc.aio.server(
        interceptors=[
            tracing.server_interceptor(),  # type: ignore[list-item]
            ErrorInterceptor(),
            auth_interceptor,
        ],
        options=[("grpc.max_receive_message_length", max_message_bytes), ("grpc.so_reuseport", 0)],
    )
    names = register(server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        raise Unavailable(f"cannot listen on {address}: the port is taken or the address is not local") from None
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("listening on %s", f"{address.rsplit(':', 1)[0]}:{port}", extra={"fields": {"services": names}})
    running = RunningServer(server, port, health_servicer, names, list(cleanups or []))
    if dependencies is not None:
        running.monitor = asyncio.create_task(_watch_dependencies(running, dependencies))
    return running


async def _watch_dependencies(running: RunningServer, dependencies: DependencyCheck) -> None:
    """Keep the health status in step with the service's dependencies; log each change once. Two
    failed probes in a row turn it NOT_SERVING (one slow probe on a busy machine does not); one
    good probe turns it SERVING again."""
    serving, failed = True, 0
    while True:
        await asyncio.sleep(HEALTH_INTERVAL_S)
        try:
            problems = await dependencies()
        except Exception as err:  # a probe that fails in an unexpected way is a problem too
            problems = [f"health probe failed ({type(err).__name__})"]
        failed = failed + 1 if problems else 0
        if serving == (failed < 2):
            continue
        serving = failed < 2
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *running.service_names]:
            await running.health.set(name, status)
        if serving:
            log.info("dependencies reachable again: SERVING")
        else:
            log.warning("NOT_SERVING: %s", "; ".join(problems))


async def serve_forever(running: RunningServer, grace_s: float) -> None:
    """Block until SIGTERM or SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.ensure_future(running.server.wait_for_termination())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down (grace %.1fs)", grace_s)
    await running.stop(grace_s)
    stopper.cancel()
    log.info("stopped")
