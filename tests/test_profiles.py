"""Optimization profiles (docs/optimization.md): SetProfile/GetProfile/ListProfiles/DeleteProfile, their checks
(INVALID_ARGUMENT naming the field), tenant isolation, and Generate/GenerateStream applying a model's default
profile unless a request names another, "none", or overrides its fields.

The model is the untaught tiny Llama of tests/trained_models.py, which babbles to its token cap under greedy
decoding (the first test), and the fully fine-tuned one, which answers "rouge": a profile's max_tokens and stop
strings visibly change its answer.
"""

from __future__ import annotations

import secrets

import grpc
import pytest
import test_generate
from rpc_refusals import assert_refused, refused
from trained_models import FULL, GENERATE_TIMEOUT_S, QUESTION, register, trained_model, upload

from distillery.registry.v1 import registry_pb2
from services.registry import sampling as sampler

artifacts = test_generate.artifacts  # the fixture: tiny trained models, as test_generate makes them


def babbler(services, service, tenant_id: str, artifacts) -> registry_pb2.Model:
    """The untaught base model, registered as a full fine-tune."""
    run_id = f"run_{secrets.token_hex(6)}"
    uri = upload(services, artifacts["base"], f"tenants/{tenant_id}/runs/{run_id}/model/")
    return register(service, run_id, FULL, uri, str(artifacts["base"]))


def ask(model_id: str, content: str = QUESTION, **options) -> registry_pb2.GenerateRequest:
    return registry_pb2.GenerateRequest(
        model_id=model_id, messages=[registry_pb2.ChatMessage(role="user", content=content)], **options
    )


def set_profile(client, model_id: str, name: str = "", vectors=(), **sampling) -> registry_pb2.Profile:
    request = registry_pb2.SetProfileRequest(
        model_id=model_id, name=name, vectors=list(vectors), sampling=registry_pb2.Sampling(**sampling)
    )
    return client.registry.SetProfile(request)


def test_profiles_are_set_read_listed_and_deleted_per_tenant(
    services, make_tenant, client_for, service_registry_for, artifacts
):
    tenant, other = make_tenant(), make_tenant()
    client, stranger = client_for(tenant), client_for(other)
    model = babbler(services, service_registry_for(tenant), tenant.tenant_id, artifacts)

    made = set_profile(client, model.id, temperature=0.7, top_p=0.9, stop=["\n\n"])
    assert (made.name, made.model_id) == ("default", model.id)
    assert made.sampling.temperature == 0.7 and made.sampling.top_p == 0.9 and list(made.sampling.stop) == ["\n\n"]
    assert not made.sampling.HasField("top_k") and made.updated_at.seconds > 0
    set_profile(client, model.id, "short", strategy="greedy", max_tokens=4)
    got = client.registry.GetProfile(registry_pb2.GetProfileRequest(model_id=model.id, name="default"))
    assert got.sampling == made.sampling
    listed = client.registry.ListProfiles(registry_pb2.ListProfilesRequest(model_id=model.id))
    assert [p.name for p in listed.profiles] == ["default", "short"]
    # Set again: replaced.
    assert set_profile(client, model.id, "short", max_tokens=6).sampling == registry_pb2.Sampling(max_tokens=6)

    # Another tenant sees no such model; a missing profile says how to set one.
    for call in (
        lambda: stranger.registry.GetProfile(registry_pb2.GetProfileRequest(model_id=model.id)),
        lambda: stranger.registry.ListProfiles(registry_pb2.ListProfilesRequest(model_id=model.id)),
        lambda: set_profile(stranger, model.id, max_tokens=3),
        lambda: stranger.registry.DeleteProfile(registry_pb2.DeleteProfileRequest(model_id=model.id)),
        lambda: stranger.registry.Generate(ask(model.id, profile="short"), timeout=GENERATE_TIMEOUT_S),
    ):
        assert "not found" in refused(call, grpc.StatusCode.NOT_FOUND).details()
    missing = refused(
        lambda: client.registry.GetProfile(registry_pb2.GetProfileRequest(model_id=model.id, name="nope")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "distillery models optimize" in missing.details()

    # Every check names the field and what to give.
    for sampling, where in (
        ({"strategy": "beam"}, "sampling.strategy"),
        ({"temperature": 2.5}, "sampling.temperature"),
        ({"strategy": "sample", "temperature": 0.0}, "sampling.temperature"),
        ({"top_p": 0.0}, "sampling.top_p"),
        ({"top_p": 1.5}, "sampling.top_p"),
        ({"min_p": 1.0}, "sampling.min_p"),
        ({"repetition_penalty": 3.0}, "sampling.repetition_penalty"),
        ({"max_tokens": 0}, "sampling.max_tokens"),
        ({"max_tokens": 5000}, "sampling.max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "sampling.stop"),
        ({"stop": ["x" * 65]}, "sampling.stop[0]"),
    ):
        assert_refused(lambda s=sampling: set_profile(client, model.id, **s), where)
    assert_refused(lambda: set_profile(client, model.id, "none", max_tokens=3), "name")
    strong = registry_pb2.AttachedVector(vector_id="vec_x", strength=100.0)
    assert_refused(lambda: set_profile(client, model.id, vectors=[strong]), "vectors[0].strength")
    assert_refused(
        lambda: client.registry.Generate(
            ask(model.id, sampling=registry_pb2.Sampling(top_k=-1)), timeout=GENERATE_TIMEOUT_S
        ),
        "sampling.top_k",
    )

    client.registry.DeleteProfile(registry_pb2.DeleteProfileRequest(model_id=model.id, name="short"))
    listed = client.registry.ListProfiles(registry_pb2.ListProfilesRequest(model_id=model.id))
    assert [p.name for p in listed.profiles] == ["default"]
    refused(
        lambda: client.registry.DeleteProfile(registry_pb2.DeleteProfileRequest(model_id=model.id, name="short")),
        grpc.StatusCode.NOT_FOUND,
    )
    # A deleted model takes its profiles with it (a new model of the same id cannot exist; the rows are gone).
    client.registry.DeleteModel(registry_pb2.DeleteModelRequest(id=model.id))
    refused(
        lambda: client.registry.ListProfiles(registry_pb2.ListProfilesRequest(model_id=model.id)),
        grpc.StatusCode.NOT_FOUND,
    )


def streamed(client, request: registry_pb2.GenerateRequest) -> tuple[str, registry_pb2.GenerateResponse]:
    chunks = list(client.registry.GenerateStream(request, timeout=GENERATE_TIMEOUT_S))
    return "".join(c.delta for c in chunks), chunks[-1].final


def test_generate_applies_the_default_profile_unless_the_request_says_otherwise(
    services, make_tenant, client_for, service_registry_for, artifacts
):
    tenant = make_tenant()
    client = client_for(tenant)
    model = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, FULL)
    plain = client.registry.Generate(ask(model.id, max_new_tokens=24), timeout=GENERATE_TIMEOUT_S)
    assert (plain.message.content.strip(), plain.finish_reason) == ("rouge", "stop")
    assert plain.profile == "" and plain.sampling.strategy == "greedy" and plain.sampling.max_tokens == 24

    # A stop string inside the answer: the answer ends before it.
    set_profile(client, model.id, max_tokens=24, stop=["ug"])
    stopped = client.registry.Generate(ask(model.id), timeout=GENERATE_TIMEOUT_S)
    assert stopped.message.content == plain.message.content[: plain.message.content.find("ug")]
    assert stopped.message.content.strip() == "ro"
    assert (stopped.finish_reason, stopped.profile) == ("stop", "default")
    assert list(stopped.sampling.stop) == ["ug"] and stopped.sampling.max_tokens == 24

    # Streamed: nothing past the stop string is sent, and the final chunk is Generate's answer.
    deltas, final = streamed(client, ask(model.id))
    assert deltas == final.message.content == stopped.message.content
    assert final.finish_reason == "stop" and final.profile == "default"

    # The request's fields win: its stop strings, its max_tokens; "none" applies no profile.
    whole = client.registry.Generate(
        ask(model.id, sampling=registry_pb2.Sampling(stop=["zz"])), timeout=GENERATE_TIMEOUT_S
    )
    assert (whole.message.content, whole.profile) == (plain.message.content, "default")
    short = client.registry.Generate(ask(model.id, sampling=registry_pb2.Sampling(max_tokens=1, stop=["zz"])),
                                     timeout=GENERATE_TIMEOUT_S)  # fmt: skip
    assert (short.completion_tokens, short.finish_reason) == (1, "length")
    assert client.registry.Generate(ask(model.id, max_new_tokens=1), timeout=GENERATE_TIMEOUT_S).completion_tokens == 1
    none = client.registry.Generate(ask(model.id, profile="none"), timeout=GENERATE_TIMEOUT_S)
    assert (none.message.content, none.profile) == (plain.message.content, "")

    # A named profile that samples (a seedless sample may differ, so its report is checked), and a request's
    # greedy strategy over it.
    set_profile(client, model.id, "hot", temperature=1.5, top_k=5, top_p=0.9, min_p=0.05, max_tokens=8,
                repetition_penalty=1.2)  # fmt: skip
    hot = client.registry.Generate(ask(model.id, profile="hot"), timeout=GENERATE_TIMEOUT_S)
    assert hot.profile == "hot" and hot.sampling.strategy == "sample" and hot.sampling.temperature == 1.5
    assert hot.sampling.top_k == 5 and hot.sampling.repetition_penalty == 1.2 and hot.completion_tokens <= 8
    cold = client.registry.Generate(
        ask(model.id, profile="hot", sampling=registry_pb2.Sampling(strategy="greedy")), timeout=GENERATE_TIMEOUT_S
    )
    assert cold.sampling.strategy == "greedy" and cold.sampling.temperature == 0
    refused(
        lambda: client.registry.Generate(ask(model.id, profile="nope"), timeout=GENERATE_TIMEOUT_S),
        grpc.StatusCode.NOT_FOUND,
    )


@pytest.mark.parametrize(
    ("pieces", "stops", "sent"),
    [
        (["Hello wor", "ld. END", " more"], ["END"], "Hello world. "),
        (["ab", "c", "d"], ["cd"], "ab"),
        (["a<", "b"], ["<x"], "a<b"),
        (["plain ", "text"], [], "plain text"),
    ],
)
def test_the_stop_gate_sends_nothing_past_a_stop_string(pieces, stops, sent):
    gate = sampler.StopGate(stops)
    assert "".join(gate.feed(p) for p in pieces) + ("" if gate.closed else gate.text[gate.sent :]) == sent
    assert sampler.cut("one END two END", ["END"]) == ("one ", True)


def test_a_profile_with_a_vector_steers_generate(services, make_tenant, client_for, service_registry_for, artifacts):
    """A vector computed from contrastive pairs (vectors.py), attached by name: Generate with the profile answers
    differently from "none" (greedy both), reports the vector applied, and the vector cannot be deleted while
    the profile attaches it."""
    tenant = make_tenant()
    client = client_for(tenant)
    model = babbler(services, service_registry_for(tenant), tenant.tenant_id, artifacts)
    pairs = [
        registry_pb2.ContrastivePair(prompt="Which pet?", positive="cats purr and nap", negative="dogs bark and run"),
        registry_pb2.ContrastivePair(positive="a cat is a quiet friend", negative="a dog is a loyal friend"),
    ]
    vector = client.registry.CreateVector(
        registry_pb2.CreateVectorRequest(name="cats", model_id=model.id, pairs=pairs), timeout=GENERATE_TIMEOUT_S
    )
    attached = registry_pb2.AttachedVector(vector_name="cats", strength=48.0)
    made = set_profile(client, model.id, vectors=[attached], max_tokens=12)
    assert [(v.vector_id, v.vector_name, v.strength) for v in made.vectors] == [(vector.id, "cats", 48.0)]

    steered = client.registry.Generate(ask(model.id, "Tell me about the sea"), timeout=GENERATE_TIMEOUT_S)
    plain = client.registry.Generate(
        ask(model.id, "Tell me about the sea", profile="none", max_new_tokens=12), timeout=GENERATE_TIMEOUT_S
    )
    detached = client.registry.Generate(
        ask(model.id, "Tell me about the sea", no_vectors=True), timeout=GENERATE_TIMEOUT_S
    )
    assert steered.message.content != plain.message.content, steered.message.content
    assert detached.message.content == plain.message.content and not detached.vectors
    assert [(v.vector_id, v.strength) for v in steered.vectors] == [(vector.id, 48.0)]
    # The request's own vectors replace the profile's: a negative strength steers elsewhere.
    away = client.registry.Generate(
        ask(
            model.id, "Tell me about the sea", vectors=[registry_pb2.AttachedVector(vector_id=vector.id, strength=-48)]
        ),
        timeout=GENERATE_TIMEOUT_S,
    )
    assert [v.strength for v in away.vectors] == [-48.0] and away.message.content != steered.message.content

    err = refused(
        lambda: client.registry.DeleteVector(registry_pb2.DeleteVectorRequest(vector_id=vector.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "default" in err.details()
