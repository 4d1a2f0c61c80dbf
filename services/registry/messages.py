"""The registry's domain objects as proto messages (tenants, keys, models, deployments, quotas, Generate's
replies) and chat messages as chat templates take them; the servicer translates with these."""

from __future__ import annotations

import json
from typing import Any

from distillery.registry.v1 import registry_pb2
from services.common.protoconv import struct, timestamp
from services.registry import deployments, models, quotas, tenants
from services.registry.generate import Reply


def tenant_pb(t: tenants.Tenant) -> registry_pb2.Tenant:
    return registry_pb2.Tenant(
        id=t.id, name=t.name, tier=t.tier, model_allowance=t.model_allowance, created_at=timestamp(t.created_at)
    )


def key_pb(k: tenants.ApiKey) -> registry_pb2.ApiKey:
    return registry_pb2.ApiKey(
        id=k.id, tenant_id=k.tenant_id, name=k.name, prefix=k.prefix,
        created_at=timestamp(k.created_at), revoked_at=timestamp(k.revoked_at), store_traffic=k.store_traffic,
    )  # fmt: skip


def model_pb(m: models.Model) -> registry_pb2.Model:
    return registry_pb2.Model(
        id=m.id, tenant_id=m.tenant_id, name=m.name, path=m.path, base_model=m.base_model, run_id=m.run_id,
        version=m.version, artifact_kind=m.artifact_kind, artifact_uri=m.artifact_uri, metrics=m.metrics,
        training_config=struct(m.training_config), created_at=timestamp(m.created_at), tools_json=m.tools_json,
        state=m.state,
    )  # fmt: skip


def deployment_pb(d: deployments.Deployment, endpoint: str) -> registry_pb2.Deployment:
    return registry_pb2.Deployment(
        model_id=d.model_id, model_name=d.model_name, state=d.state, engine=d.engine, replicas=d.replicas,
        endpoint=endpoint, upstream=d.upstream, adapter_name=d.adapter_name, artifact_uri=d.artifact_uri,
        artifact_kind=d.artifact_kind, created_at=timestamp(d.created_at), error=d.error,
    )  # fmt: skip


def chat_message(m: registry_pb2.ChatMessage) -> dict[str, Any]:
    """A ChatMessage as the dict that chat templates take."""
    message: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json or "{}"}}
            for c in m.tool_calls
        ]  # fmt: skip
    if m.tool_call_id:
        message["tool_call_id"] = m.tool_call_id
    return message


def generate_response_pb(reply: Reply, with_prompt_ids: bool) -> registry_pb2.GenerateResponse:
    """A Reply as Generate returns it (and GenerateStream's final chunk)."""
    calls = [
        registry_pb2.ToolCall(id=f"call_{i + 1}", name=c.name, arguments_json=json.dumps(c.arguments))
        for i, c in enumerate(reply.answer.calls)
    ]
    invalid = []
    if reply.answer.invalid_raw:
        invalid.append(registry_pb2.InvalidToolCall(raw=reply.answer.invalid_raw, error=reply.answer.invalid_error))
    return registry_pb2.GenerateResponse(
        message=registry_pb2.ChatMessage(role="assistant", content=reply.answer.content, tool_calls=calls),
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        latency_ms=reply.latency_ms,
        finish_reason=reply.answer.finish_reason,
        invalid_tool_calls=invalid,
        prompt_token_ids=reply.prompt_ids if with_prompt_ids else [],
    )


def quota_pb(q: quotas.Quota) -> registry_pb2.Quota:
    return registry_pb2.Quota(
        tenant_id=q.tenant_id, tier=q.tier, allowance=q.allowance, used=q.used, reserved=q.reserved,
        available=q.available,
    )  # fmt: skip
