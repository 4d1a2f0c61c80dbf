"""GenerateStream: Generate's answer, streamed. The deltas join to the answer's content, and the last chunk
is the whole answer exactly as Generate returns it (greedy decoding, so the same text).

The models are the tiny trained Llamas of tests/trained_models.py (the adapter says "bleu", the full fine-tune
"rouge") and a tiny Qwen2 taught one tool call (tests/test_generate_tools.py).
"""

from __future__ import annotations

import secrets

import grpc
import pytest
import test_generate
from rpc_refusals import raised
from test_generate_tools import CALL, REQUEST, register_tool_model, save_as_trained, teach
from tiny_models import build_qwen2
from trained_models import FULL, GENERATE_TIMEOUT_S, LORA, QUESTION, register, trained_model, upload

from distillery.registry.v1 import registry_pb2
from services.common import decoding
from services.registry.streaming import ContentGate

artifacts = test_generate.artifacts  # the fixture: tiny trained models, as test_generate makes them


def request(model_id: str, content: str = QUESTION, **options) -> registry_pb2.GenerateRequest:
    return registry_pb2.GenerateRequest(
        model_id=model_id, messages=[registry_pb2.ChatMessage(role="user", content=content)], **options
    )


def streamed(client, ask: registry_pb2.GenerateRequest) -> tuple[list[str], registry_pb2.GenerateResponse]:
    """The deltas, and the final answer; every chunk but the last holds a delta and no final."""
    chunks = list(client.registry.GenerateStream(ask, timeout=GENERATE_TIMEOUT_S))
    *deltas, last = chunks
    assert last.HasField("final"), last
    assert all(not c.HasField("final") and c.delta for c in deltas), deltas
    return [c.delta for c in deltas] + ([last.delta] if last.delta else []), last.final


def without_latency(reply: registry_pb2.GenerateResponse) -> registry_pb2.GenerateResponse:
    copy = registry_pb2.GenerateResponse()
    copy.CopyFrom(reply)
    copy.latency_ms = 0
    return copy


@pytest.mark.parametrize(("kind", "answer"), [(LORA, "bleu"), (FULL, "rouge")], ids=["lora", "full"])
def test_the_stream_joins_to_generates_answer(
    services, make_tenant, client_for, service_registry_for, artifacts, kind, answer
):
    tenant = make_tenant()
    client = client_for(tenant)
    model = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, kind)

    ask = request(model.id, max_new_tokens=8, return_prompt_token_ids=True)
    deltas, final = streamed(client, ask)
    whole = client.registry.Generate(ask, timeout=GENERATE_TIMEOUT_S)
    assert final.message.content.strip() == answer
    assert "".join(deltas) == final.message.content
    assert without_latency(final) == without_latency(whole)
    assert final.latency_ms > 0 and final.prompt_token_ids


def test_a_long_answer_streams_in_many_pieces(services, make_tenant, client_for, service_registry_for, artifacts):
    """The untaught base model babbles to the token cap: many pieces, joined exactly as Generate decodes them."""
    tenant = make_tenant()
    client = client_for(tenant)
    run_id = f"run_{secrets.token_hex(6)}"
    uri = upload(services, artifacts["base"], f"tenants/{tenant.tenant_id}/runs/{run_id}/model/")
    model = register(service_registry_for(tenant), run_id, FULL, uri, str(artifacts["base"]))

    ask = request(model.id, "Tell me about the sea and the sky", max_new_tokens=24)
    deltas, final = streamed(client, ask)
    assert len(deltas) > 2, deltas
    assert "".join(deltas) == final.message.content
    assert without_latency(final) == without_latency(client.registry.Generate(ask, timeout=GENERATE_TIMEOUT_S))


def test_a_tool_call_streams_no_content_and_arrives_whole(
    services, make_tenant, client_for, service_registry_for, tmp_path
):
    model_dir = build_qwen2(tmp_path / "student", tools=True)
    save_as_trained(model_dir)
    teach(model_dir, CALL + "<|im_end|>")
    tenant = make_tenant()
    model = register_tool_model(services, service_registry_for(tenant), tenant.tenant_id, model_dir)
    client = client_for(tenant)

    ask = request(model.id, REQUEST, model_tools=True)
    deltas, final = streamed(client, ask)
    assert deltas == []
    assert final.finish_reason == "tool_calls" and final.message.tool_calls[0].name == "book_meeting"
    assert without_latency(final) == without_latency(client.registry.Generate(ask, timeout=GENERATE_TIMEOUT_S))


def test_another_tenants_model_is_not_found_and_bad_requests_are_refused(
    services, make_tenant, client_for, service_registry_for, artifacts
):
    owner, other = make_tenant(), make_tenant()
    model = trained_model(services, service_registry_for(owner), owner.tenant_id, artifacts, LORA)
    err = raised(lambda: list(client_for(other).registry.GenerateStream(request(model.id), timeout=30)))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = raised(lambda: list(client_for(owner).registry.GenerateStream(
        request(model.id, max_new_tokens=5000), timeout=30)))  # fmt: skip
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_new_tokens" in err.details()
    err = raised(lambda: list(client_for(owner).registry.GenerateStream(
        request(model.id, model_tools=True), timeout=30)))  # fmt: skip
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "not trained with tools" in err.details()


def gate_run(pieces: list[str], tools: bool) -> tuple[list[str], str]:
    gate = ContentGate(tools)
    out = [d for d in (gate.feed(p) for p in pieces) if d]
    text = "".join(pieces)
    answer = decoding.tool_answer(text, "stop") if tools else decoding.ToolAnswer(text)
    tail = gate.finish(answer)
    return out + ([tail] if tail else []), answer.content


@pytest.mark.parametrize(
    "pieces",
    [["Hel", "lo", " there"], ["  ", "<to", "ol", " no"], ["a <tool", "box> b"], ["<", "tool", "_call", ">x"]],
)
def test_the_content_gate_holds_back_only_what_could_be_a_tool_call(pieces):
    deltas, content = gate_run(pieces, tools=True)
    if "<tool_call>" in "".join(pieces):
        assert deltas == []
    else:
        assert "".join(deltas) == content
    assert gate_run(pieces, tools=False)[0] == pieces  # without tools, every piece streams as it comes
    # With tools, nothing that could begin a call streams before the text says it is not one.
    gate = ContentGate(True)
    assert [gate.feed(p) for p in ("  ", "<tool", "_c")] == ["", "", ""]
    assert gate.feed("x") == "  <tool_cx"
    assert gate.feed(" <tool_c") == " " and gate.feed("all>") == ""
