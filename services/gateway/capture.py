"""Captured traffic: a request and its answer handed to ingest (CaptureTraffic, the service token),
when the request says ``"store": true`` or its key stores traffic. What is kept: the model, the
source ("endpoint" or "proxy"), the metadata tags, ``{"messages", "tools"}`` exactly as the
client sent them (OpenAI's shapes; tools as OpenAI function tools), the assistant message, and the
token counts. One addition: a request to one of the tenant's models with no system message gets
the model's registered system prompt first (its training_config's ``system_prompt``), since the
model answered under it. Never a header, never a key; content is never logged."""

from __future__ import annotations

import json
import logging

from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2
from services.gateway.answers import Answer
from services.gateway.api_errors import ApiError
from services.gateway.chat_request import ChatCall
from services.gateway.peers import Peers
from services.gateway.routing import Route

log = logging.getLogger("distillery.gateway")


def record_of(call: ChatCall, route: Route, answer: Answer, system_prompt: str = "") -> ingest_pb2.TrafficRecord:
    message = {k: v for k, v in answer.message().items() if v is not None}
    request = call.traffic_request()
    if system_prompt:
        request["messages"] = [{"role": "system", "content": system_prompt}, *request["messages"]]
    return ingest_pb2.TrafficRecord(
        model=route.model, source=route.source, metadata=call.metadata,
        request_json=json.dumps(request, ensure_ascii=False),
        response_json=json.dumps(message, ensure_ascii=False),
        prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
    )  # fmt: skip


async def model_system_prompt(peers: Peers, api_key: str, call: ChatCall, route: Route) -> str:
    """The model's registered system prompt, when the request to one of the tenant's models has none."""
    if route.source != "endpoint" or any(m["role"] == "system" for m in call.messages):
        return ""
    model = await peers.registry("GetModel", registry_pb2.GetModelRequest(id=route.model), api_key)
    prompt = model.training_config.fields.get("system_prompt")
    return prompt.string_value if prompt is not None else ""


async def capture(peers: Peers, api_key: str, tenant_id: str, call: ChatCall, route: Route, answer: Answer) -> None:
    """Store one exchange; a failure is logged (without content) and the answer still goes out."""
    try:
        system_prompt = await model_system_prompt(peers, api_key, call, route)
        stored = await peers.capture(tenant_id, record_of(call, route, answer, system_prompt))
    except ApiError as err:
        log.warning("traffic not captured: %s (%s)", err.status, err.type)
        return
    log.info("traffic captured", extra={"fields": {"traffic_id": stored.id, "model": route.model}})
