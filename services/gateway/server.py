"""Wires the gateway: gRPC clients of the registry, teacher and ingest, the vLLM upstreams' HTTP
session, the OpenAI-compatible HTTP server (aiohttp) on its own address, and a gRPC server with
health checking and reflection only (no servicer), so the stack and probes see it like any service.
The HTTP server starts and stops with the gRPC one."""

from __future__ import annotations

import logging

import grpc
from aiohttp import web

from services.common import auth
from services.common.errors import Unauthenticated, Unavailable
from services.common.server import RunningServer, start_server
from services.gateway.openai_api import Gateway, make_app
from services.gateway.peers import Peers
from services.gateway.settings import Settings
from services.gateway.vllm import VllmPool

log = logging.getLogger("distillery.gateway")
# The gateway serves no gRPC method; its gRPC server answers health checks and reflection only.
ACCESS = auth.AccessTable(service="distillery.gateway.v1.Gateway", methods={})


async def _no_keys(key: str) -> auth.Caller:
    raise Unauthenticated("the gateway serves HTTP only: call its OpenAI-compatible endpoint")


def _register(server: grpc.aio.Server) -> list[str]:
    return []


async def start_http(app: web.Application, address: str) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on host:port (port 0: any free one); returns the runner and the URL it answers at."""
    host, _, port = address.rpartition(":")
    runner = web.AppRunner(app, access_log=None)  # no access log: paths only would do, but headers never
    await runner.setup()
    site = web.TCPSite(runner, host, int(port))  # SO_REUSEADDR (posix): a restart takes its port back at once
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise Unavailable(f"cannot listen on {address} (HTTP): the port is taken or the address is not local") from None
    bound = runner.addresses[0]
    return runner, f"http://{host}:{bound[1]}"


async def create(settings: Settings) -> RunningServer:
    peers = Peers(settings)
    pool = VllmPool(settings.vllm_api_key, settings.generate_timeout_s)
    app = make_app(Gateway(peers, pool, settings.max_body_bytes))
    runner, url = await start_http(app, settings.http_address)
    log.info("OpenAI-compatible endpoint at %s/v1", url)
    try:
        return await start_server(
            address=settings.server.grpc_address,
            service_token=settings.server.service_token,
            register=_register,
            access=ACCESS,
            resolve_key=_no_keys,
            cleanups=[peers.close, pool.close, runner.cleanup],
        )
    except BaseException:
        await runner.cleanup()
        await peers.close()
        raise
