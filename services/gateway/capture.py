"""Captured traffic: a request and its answer handed to ingest (CaptureTraffic, the service token),
when the request says ``"store": true`` or its key stores traffic. What is kept: the model, the
source ("endpoint" or "proxy"), the metadata tags, ``{"messages", "tools"}`` exactly as the
client sent them (OpenAI's shapes), the assistant message, and the token counts. Never a header,
never a key; content is never logged."""

from __future__ import annotations

import json
import logging

from distillery.ingest.v1 import ingest_pb2
from services.gateway.answers import Answer
from services.gateway.api_errors import ApiError
from services.gateway.chat_request import ChatCall
from services.gateway.peers import Peers
from services.gateway.routing import Route

log = logging.getLogger("distillery.gateway")


def record_of(call: ChatCall, route: Route, answer: Answer) -> ingest_pb2.TrafficRecord:
    message = {k: v for k, v in answer.message().items() if v is not None}
    return ingest_pb2.TrafficRecord(
        model=route.model, source=route.source, metadata=call.metadata,
        request_json=json.dumps(call.traffic_request(), ensure_ascii=False),
        response_json=json.dumps(message, ensure_ascii=False),
        prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
    )  # fmt: skip


async def capture(peers: Peers, tenant_id: str, call: ChatCall, route: Route, answer: Answer) -> None:
    """Store one exchange; a failure is logged (without content) and the answer still goes out."""
    try:
        stored = await peers.capture(tenant_id, record_of(call, route, answer))
    except ApiError as err:
        log.warning("traffic not captured: ingest answered %s (%s)", err.status, err.type)
        return
    log.info("traffic captured", extra={"fields": {"traffic_id": stored.id, "model": route.model}})
