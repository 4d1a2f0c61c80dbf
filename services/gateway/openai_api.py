"""The OpenAI-compatible HTTP routes; the handlers stay thin (checks in chat_request, routing in
routing, engines in engines and vllm, shapes in answers, errors in api_errors).

    GET  /health                   200 while the gateway is up
    GET  /v1/models                the tenant's models as OpenAI model objects
    GET  /v1/models/{id}           one of them
    POST /v1/chat/completions      a chat completion, or its chunks as server-sent events
    POST /v1/audio/transcriptions  a speech model transcribes a clip (multipart form)

Every route but /health takes "Authorization: Bearer <API key>" (a Distillery API key).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from opentelemetry import propagate, trace

from distillery.common.v1 import common_pb2
from distillery.registry.v1 import registry_pb2
from services.gateway.answers import Answer, Reply
from services.gateway.api_errors import ApiError, invalid, unauthorized
from services.gateway.capture import capture
from services.gateway.chat_request import parse_chat, too_large
from services.gateway.peers import Peers
from services.gateway.routing import deployment_of, resolve_model_id, route
from services.gateway.vllm import VllmEngine, VllmPool

log = logging.getLogger("distillery.gateway")
TRACER = trace.get_tracer("distillery.gateway")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json")


@dataclass
class Gateway:
    peers: Peers
    pool: VllmPool
    max_body_bytes: int


@dataclass
class Tenant:
    api_key: str
    tenant_id: str
    store_traffic: bool


GATEWAY = web.AppKey("gateway", Gateway)


def make_app(gateway: Gateway) -> web.Application:
    app = web.Application(client_max_size=gateway.max_body_bytes, middlewares=[_errors(gateway.max_body_bytes)])
    app[GATEWAY] = gateway
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id}", get_model)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    return app


def _error_response(err: ApiError) -> web.Response:
    return web.Response(status=err.status, body=err.body(), content_type="application/json")


def _errors(limit: int) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # One span per request, continuing the caller's trace (traceparent); the services' spans nest under it.
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unknown"
        with TRACER.start_as_current_span(f"{request.method} {route}", context=propagate.extract(request.headers),
                                          kind=trace.SpanKind.SERVER) as span:  # fmt: skip
            response = await _answer(request, handler)
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", response.status)
            return response

    async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as err:
            return _error_response(err)
        except web.HTTPRequestEntityTooLarge:
            return _error_response(too_large(limit))
        except web.HTTPException as err:  # no such route, wrong method
            if err.status < 400:
                raise
            kind = "invalid_request_error" if err.status < 500 else "server_error"
            return _error_response(ApiError(err.status, f"{request.method} {request.path}: {err.reason}", kind))
        except Exception:
            log.exception("request failed", extra={"fields": {"path": request.path}})
            return _error_response(ApiError(500, "the gateway failed to answer; try again", "server_error"))

    return middleware


def _gateway(request: web.Request) -> Gateway:
    return request.app[GATEWAY]


async def _tenant(request: web.Request) -> Tenant:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise unauthorized("You didn't provide an API key: send 'Authorization: Bearer <your Distillery API key>'")
    reply = await _gateway(request).peers.authenticate(key.strip())
    return Tenant(key.strip(), reply.tenant_id, reply.store_traffic)


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f"{type(err).__name__} at {getattr(err, 'pos', 0)}"
        raise invalid(f"the request body is not valid JSON ({where}): send a JSON object") from None


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _model_object(model: registry_pb2.Model) -> dict[str, Any]:
    return {
        "id": model.id, "object": "model", "created": model.created_at.seconds, "owned_by": model.tenant_id,
        "name": model.name, "version": model.version, "state": model.state,
    }  # fmt: skip


async def list_models(request: web.Request) -> web.Response:
    tenant = await _tenant(request)
    peers, models, token = _gateway(request).peers, [], ""
    while True:
        page = common_pb2.PageRequest(page_size=500, page_token=token)
        listed = await peers.registry("ListModels", registry_pb2.ListModelsRequest(page=page), tenant.api_key)
        models += [_model_object(m) for m in listed.models]
        token = listed.page.next_page_token
        if not token:
            return web.json_response({"object": "list", "data": models})


async def get_model(request: web.Request) -> web.Response:
    tenant = await _tenant(request)
    model_id = await resolve_model_id(_gateway(request).peers, tenant.api_key, request.match_info["model_id"])
    try:
        model = await _gateway(request).peers.registry("GetModel", registry_pb2.GetModelRequest(id=model_id),
                                                       tenant.api_key)  # fmt: skip
    except ApiError as err:
        if err.status == 404:
            raise ApiError(404, f"The model `{request.match_info['model_id']}` does not exist",
                           "invalid_request_error", "model", "model_not_found") from None  # fmt: skip
        raise
    return web.json_response(_model_object(model))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    tenant = await _tenant(request)
    gateway = _gateway(request)
    call = parse_chat(await _json_body(request))
    store = call.store or tenant.store_traffic
    if store and not gateway.peers.captures:
        raise ApiError(503, "cannot store traffic: the gateway has no ingest address", "server_error")
    chosen = await route(gateway.peers, gateway.pool, tenant.api_key, call.model, call.proxy_provider is not None)
    chosen.engine.check(call)
    if isinstance(chosen.engine, VllmEngine):  # the model's profile, read here (the local engine's registry applies it)
        await chosen.engine.apply_profile(gateway.peers, tenant.api_key, call)
    reply = Reply(call.model)

    async def capture_with(answer: Answer) -> None:
        await capture(gateway.peers, tenant.api_key, tenant.tenant_id, call, chosen, answer)

    if not call.stream:
        answer = await chosen.engine.complete(call)
        if store:
            await capture_with(answer)
        return web.json_response(reply.completion(answer))

    events = chosen.engine.stream(call)
    try:
        return await _stream(request, events, reply, call.include_usage, capture_with if store else None)
    finally:
        await events.aclose()  # a client gone stops the answer (the registry stops generating)


async def _stream(
    request: web.Request,
    events: AsyncGenerator[str | Answer, None],
    reply: Reply,
    include_usage: bool,
    store: Callable[[Answer], Awaitable[None]] | None,
) -> web.StreamResponse:
    """Server-sent events: a role chunk, the content deltas, the closing chunks, usage, ``[DONE]``."""
    try:
        event = await anext(events)  # errors before the first event are a plain error response
    except StopAsyncIteration:
        raise ApiError(502, "the engine ended the answer without one; try again", "server_error") from None
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)

    async def send(data: dict[str, Any] | str) -> None:
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        await response.write(f"data: {text}\n\n".encode())

    sent: list[str] = []
    try:
        await send(reply.chunk({"role": "assistant", "content": ""}))
        try:
            while isinstance(event, str):
                sent.append(event)
                await send(reply.chunk({"content": event}))
                event = await anext(events)
        except (ApiError, StopAsyncIteration) as err:  # broken after it began: an error event, as OpenAI sends
            error = err if isinstance(err, ApiError) else ApiError(502, "the answer ended early", "server_error")
            await send(json.loads(error.body()))
            await response.write_eof()
            return response
        for chunk in reply.closing_chunks(event, "".join(sent)):
            await send(chunk)
        if include_usage:
            await send(reply.usage_chunk(event))
        if store is not None:
            await store(event)
        await send("[DONE]")
        await response.write_eof()
    except ConnectionResetError:
        log.info("the client went away during a streamed answer")
    return response


async def transcriptions(request: web.Request) -> web.Response:
    tenant = await _tenant(request)
    gateway = _gateway(request)
    if not request.content_type.startswith("multipart/"):
        raise invalid("send the clip as multipart/form-data (file, model, language, response_format)")
    form = await request.post()
    upload, model = form.get("file"), form.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("`model` is required: a speech model's id or name", "model")
    if not isinstance(upload, web.FileField):
        raise invalid("`file` is required: a .wav clip", "file")
    fmt = form.get("response_format") or "json"
    if fmt not in TRANSCRIPTION_FORMATS:
        raise invalid(f"response_format must be one of {', '.join(TRANSCRIPTION_FORMATS)}", "response_format")
    language = form.get("language") or ""
    model_id = await resolve_model_id(gateway.peers, tenant.api_key, model)
    deployment = await deployment_of(gateway.peers, tenant.api_key, model_id, model)
    if deployment.engine != "local":
        raise invalid(f"model {model_id} is deployed on {deployment.engine}: transcriptions are served by the "
                      "local engine", "model")  # fmt: skip
    clip = registry_pb2.TranscribeRequest(model_id=model_id, audio=upload.file.read(), language=str(language))
    found = await gateway.peers.answer("Transcribe", clip, tenant.api_key)
    if fmt == "text":
        return web.Response(text=found.text + "\n", content_type="text/plain")
    if fmt == "verbose_json":
        return web.json_response({"task": "transcribe", "language": found.language, "duration": found.duration_s,
                                  "text": found.text, "segments": []})  # fmt: skip
    return web.json_response({"text": found.text})
