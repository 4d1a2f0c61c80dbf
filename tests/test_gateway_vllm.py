"""The gateway's vLLM engine against a vLLM stand-in at the wire (tests/vllm_standin.py): a deployment on
the "vllm" engine is routed to its upstream with ``"model": <adapter name>``, the adapter is loaded into
the shared pool by name once (and again after the upstream forgot it), answers, streams and tool calls
come back in OpenAI's shapes, and the upstream's errors are mapped (4xx passed on, 5xx a 502 naming the
deployment), the upstream's key never shown.

The session's registry deploys on the local engine; a second registry over the same database, with
``vllm_url`` set to the stand-in, makes the vLLM deployments (the gateway reads them through the first).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest
from conftest import VLLM_API_KEY
from trained_models import FULL, LORA, QUESTION, register, upload

from distillery.registry.v1 import registry_pb2, registry_pb2_grpc
from distillery.stack import servers
from services.registry import server as registry_server


@pytest.fixture(scope="module")
def vllm_registry(services) -> Iterator[str]:
    """The address of a registry whose vLLM pool is the stand-in."""
    running = services.loop.run(registry_server.create(services.registry_settings(vllm_url=services.vllm_url)))
    yield running.address
    services.loop.run(running.stop(1.0))


def deploy_on_vllm(address: str, api_key: str, model_id: str) -> registry_pb2.Deployment:
    with grpc.insecure_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        request = registry_pb2.DeployModelRequest(model_id=model_id, engine="vllm")
        return stub.DeployModel(request, metadata=[("authorization", f"Bearer {api_key}")], timeout=30)


def adapter_model(services, service, tenant_id: str, tmp_path: Path) -> registry_pb2.Model:
    """A registered LoRA model (vLLM reads the adapter from artifact_uri; the stand-in reads nothing)."""
    directory = tmp_path / "adapter"
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    run_id = f"run_{secrets.token_hex(6)}"
    uri = upload(services, directory, f"tenants/{tenant_id}/runs/{run_id}/model/")
    return register(service, run_id, LORA, uri, "base-model")


def sdk(services, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=services.gateway_url + "/v1", api_key=api_key, max_retries=0, timeout=60)


def test_a_vllm_deployment_is_served_by_adapter_name(
    services, vllm, vllm_registry, make_tenant, service_registry_for, tmp_path
):
    tenant = make_tenant()
    model = adapter_model(services, service_registry_for(tenant), tenant.tenant_id, tmp_path)
    deployment = deploy_on_vllm(vllm_registry, tenant.api_key, model.id)
    assert (deployment.engine, deployment.adapter_name) == ("vllm", model.id)
    client = sdk(services, tenant.api_key)
    messages = [{"role": "user", "content": QUESTION}]

    completion = client.chat.completions.create(model=model.id, messages=messages, max_tokens=8, store=True,
                                                metadata={"task": "colours"}, seed=3)  # fmt: skip
    assert completion.choices[0].message.content == f"{model.id}|{QUESTION}"
    assert completion.model == model.id and completion.usage.prompt_tokens == 7
    load, chat = vllm.requests
    assert load.path == "/v1/load_lora_adapter"
    assert load.body == {"lora_name": model.id, "lora_path": model.artifact_uri}
    assert chat.path == "/v1/chat/completions" and chat.body["model"] == model.id
    assert chat.body["max_tokens"] == 8 and chat.body["seed"] == 3 and chat.body["messages"] == messages
    assert "store" not in chat.body and "metadata" not in chat.body
    assert {r.api_key for r in vllm.requests} == {VLLM_API_KEY}

    # Loaded once: the next request goes straight to the adapter.
    client.chat.completions.create(model=model.id, messages=messages)
    assert vllm.paths().count("/v1/load_lora_adapter") == 1

    # Streamed: the upstream's deltas, joined, are the answer; usage last.
    chunks = list(client.chat.completions.create(model=model.id, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"{model.id}|{QUESTION}"
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens

    # A tool call, whole or streamed in pieces, comes back with arguments that parse.
    tools = [{"type": "function", "function": {"name": "paint", "parameters": {"type": "object"}}}]
    vllm.script({"tool_call": ("paint", '{"colour": "bleu"}')}, {"tool_call": ("paint", '{"colour": "bleu"}')})
    whole = client.chat.completions.create(model=model.id, messages=messages, tools=tools)
    (call,) = whole.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("paint", {"colour": "bleu"})
    streamed = list(client.chat.completions.create(model=model.id, messages=messages, tools=tools, stream=True))
    (call,) = [tc for c in streamed for tc in (c.choices[0].delta.tool_calls or [])]
    assert json.loads(call.function.arguments) == {"colour": "bleu"}
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    assert vllm.requests[-1].body["tools"] == tools  # as sent

    # The upstream restarted and forgot the adapter: loaded again by name, and the request answered.
    vllm.restart()
    again = client.chat.completions.create(model=model.id, messages=messages)
    assert again.choices[0].message.content == f"{model.id}|{QUESTION}"
    assert vllm.paths()[-3:] == ["/v1/chat/completions", "/v1/load_lora_adapter", "/v1/chat/completions"]

    # json_schema goes to vLLM, which has constrained decoding.
    schema = {"type": "json_schema", "json_schema": {"name": "c", "schema": {"type": "object"}}}
    client.chat.completions.create(model=model.id, messages=messages, response_format=schema)
    assert vllm.requests[-1].body["response_format"] == schema


def test_upstream_errors_are_mapped(services, vllm, vllm_registry, make_tenant, service_registry_for, tmp_path):
    tenant = make_tenant()
    model = adapter_model(services, service_registry_for(tenant), tenant.tenant_id, tmp_path)
    deploy_on_vllm(vllm_registry, tenant.api_key, model.id)
    client = sdk(services, tenant.api_key)
    messages = [{"role": "user", "content": QUESTION}]

    vllm.script({"status": 400, "message": "This model's maximum context length is 2048 tokens."})
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=model.id, messages=messages)
    assert bad.value.body["message"] == "This model's maximum context length is 2048 tokens."
    assert bad.value.body["type"] == "invalid_request_error"

    vllm.script({"status": 500, "message": f"CUDA out of memory (key {VLLM_API_KEY})"})
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model=model.id, messages=messages)
    assert failed.value.status_code == 502 and model.id in failed.value.message
    assert VLLM_API_KEY not in json.dumps(failed.value.body) and "CUDA out of memory" in failed.value.message

    # Streamed, an error before the first chunk is a plain error response too.
    vllm.script({"status": 400, "message": "bad stop sequence"})
    with pytest.raises(openai.BadRequestError):
        list(client.chat.completions.create(model=model.id, messages=messages, stream=True))


def test_an_unreachable_upstream_is_503_naming_the_deployment(services, make_tenant, service_registry_for, tmp_path):
    dead = f"http://127.0.0.1:{servers.free_port()}/v1"
    running = services.loop.run(registry_server.create(services.registry_settings(vllm_url=dead)))
    try:
        tenant = make_tenant()
        model = adapter_model(services, service_registry_for(tenant), tenant.tenant_id, tmp_path)
        deploy_on_vllm(running.address, tenant.api_key, model.id)
    finally:
        services.loop.run(running.stop(1.0))
    messages = [{"role": "user", "content": QUESTION}]
    with pytest.raises(openai.APIStatusError) as unreachable:
        sdk(services, tenant.api_key).chat.completions.create(model=model.id, messages=messages)
    assert unreachable.value.status_code == 503 and model.id in unreachable.value.message
    assert "unreachable" in unreachable.value.message and unreachable.value.body["code"] == "upstream_unavailable"


def test_a_full_fine_tune_is_asked_as_its_dedicated_upstreams_model(
    services, vllm, make_tenant, service_registry_for, tmp_path
):
    dedicated = services.vllm_url.removesuffix("/v1") + "/dedicated/{model_id}/v1"
    settings = services.registry_settings(vllm_url=services.vllm_url, vllm_dedicated_url=dedicated)
    running = services.loop.run(registry_server.create(settings))
    try:
        tenant = make_tenant()
        directory = tmp_path / "full"
        directory.mkdir()
        (directory / "config.json").write_text("{}")
        run_id = f"run_{secrets.token_hex(6)}"
        uri = upload(services, directory, f"tenants/{tenant.tenant_id}/runs/{run_id}/model/")
        model = register(service_registry_for(tenant), run_id, FULL, uri, "base-model")
        deployment = deploy_on_vllm(running.address, tenant.api_key, model.id)
    finally:
        services.loop.run(running.stop(1.0))
    assert deployment.adapter_name == "" and deployment.upstream == dedicated.replace("{model_id}", model.id)
    messages = [{"role": "user", "content": QUESTION}]
    answer = sdk(services, tenant.api_key).chat.completions.create(model=model.id, messages=messages)
    assert answer.choices[0].message.content == f"{model.id}-served|{QUESTION}" and answer.model == model.id
    prefix = f"/dedicated/{model.id}/v1"
    assert vllm.paths() == [f"{prefix}/models", f"{prefix}/chat/completions"]  # no adapter to load
