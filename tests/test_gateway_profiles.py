"""A model's optimization profile through the gateway's OpenAI-compatible endpoint, asked with the official
``openai`` SDK (docs/optimization.md):

- the local engine: the registry applies the model's default profile to every request; a request's own
  parameters (``stop``, ``max_tokens``) win over it, and ``extra_body={"profile": "none"}`` asks without it;
- a vLLM deployment (tests/vllm_standin.py): the gateway reads the profile and sends its sampling as the
  upstream's request parameters where the request has none of its own; steering vectors cannot be applied
  there, so a request that attaches any is refused naming the local engine.
"""

from __future__ import annotations

import json

import openai
import psycopg
import pytest
import test_gateway_vllm
import test_generate
from test_gateway_vllm import adapter_model, deploy_on_vllm, sdk
from trained_models import FULL, GENERATE_TIMEOUT_S, QUESTION, trained_model

from distillery.registry.v1 import registry_pb2

artifacts = test_generate.artifacts  # the fixture: tiny trained models, as test_generate makes them
vllm_registry = test_gateway_vllm.vllm_registry  # the fixture: a registry whose vLLM pool is the stand-in


def chat(client: openai.OpenAI, model_id: str, **options):
    return client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": QUESTION}], **options
    ).choices[0]


def test_the_endpoint_applies_the_profile_unless_the_request_overrides_it(
    services, make_tenant, client_for, service_registry_for, artifacts
):
    tenant = make_tenant()
    client = client_for(tenant)
    model = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, FULL)
    client.registry.DeployModel(registry_pb2.DeployModelRequest(model_id=model.id, engine="local"),
                                timeout=GENERATE_TIMEOUT_S)  # fmt: skip
    api = sdk(services, tenant.api_key)
    assert chat(api, model.id).message.content.strip() == "rouge"  # no profile yet

    client.registry.SetProfile(
        registry_pb2.SetProfileRequest(model_id=model.id, sampling=registry_pb2.Sampling(stop=["ug"], max_tokens=24))
    )
    stopped = chat(api, model.id)
    assert (stopped.message.content.strip(), stopped.finish_reason) == ("ro", "stop")
    # Streamed too: nothing past the stop string.
    pieces = api.chat.completions.create(model=model.id, messages=[{"role": "user", "content": QUESTION}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices).strip() == "ro"

    # The request's parameters win; "none" asks without the profile; a missing profile is a 404.
    assert chat(api, model.id, stop=["zz"]).message.content.strip() == "rouge"
    assert chat(api, model.id, stop="zz").message.content.strip() == "rouge"
    assert chat(api, model.id, extra_body={"profile": "none"}).message.content.strip() == "rouge"
    assert chat(api, model.id, max_tokens=1).finish_reason == "length"
    with pytest.raises(openai.NotFoundError, match="no profile"):
        chat(api, model.id, extra_body={"profile": "missing"})
    with pytest.raises(openai.BadRequestError) as refused:
        chat(api, model.id, extra_body={"top_k": "many"})
    assert refused.value.body["param"] == "top_k"
    client.registry.UndeployModel(registry_pb2.UndeployModelRequest(model_id=model.id))


def test_a_vllm_deployment_gets_the_profiles_sampling_and_refuses_vectors(
    services, vllm, vllm_registry, make_tenant, client_for, service_registry_for, tmp_path
):
    tenant = make_tenant()
    client = client_for(tenant)
    model = adapter_model(services, service_registry_for(tenant), tenant.tenant_id, tmp_path)
    deploy_on_vllm(vllm_registry, tenant.api_key, model.id)
    sampling = registry_pb2.Sampling(temperature=0.3, top_k=7, repetition_penalty=1.1, stop=["END"], max_tokens=50)
    client.registry.SetProfile(registry_pb2.SetProfileRequest(model_id=model.id, sampling=sampling))
    api = sdk(services, tenant.api_key)

    chat(api, model.id)
    sent = vllm.requests[-1].body
    assert {k: sent.get(k) for k in ("temperature", "top_k", "repetition_penalty", "stop", "max_tokens")} == {
        "temperature": 0.3, "top_k": 7, "repetition_penalty": 1.1, "stop": ["END"], "max_tokens": 50,
    }  # fmt: skip
    chat(api, model.id, temperature=0.9, max_completion_tokens=5, extra_body={"top_k": 3})
    sent = vllm.requests[-1].body
    assert (sent["temperature"], sent["top_k"], sent["max_completion_tokens"], "max_tokens" in sent) == (
        0.9, 3, 5, False
    )  # fmt: skip
    chat(api, model.id, extra_body={"profile": "none"})
    assert "top_k" not in vllm.requests[-1].body and "profile" not in vllm.requests[-1].body

    asked = len(vllm.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        chat(api, model.id, extra_body={"vectors": [{"name": "concise", "strength": 4}]})
    assert refused.value.body["code"] == "vectors_not_supported" and refused.value.body["param"] == "vectors"
    assert f"distillery models deploy {model.id} --engine local" in refused.value.body["message"]
    assert len(vllm.requests) == asked  # nothing went upstream

    # A profile that attaches a vector (written as SetProfile stores one: the vector's id, here one that fits no
    # model, as the stand-in's base model cannot be loaded to make a real one) is refused the same way.
    attached = [{"vector_id": "vec_standin", "vector_name": "concise", "strength": 4.0, "first_layer": 0,
                 "last_layer": 0}]  # fmt: skip
    with psycopg.connect(services.postgres_url) as conn:
        conn.execute(
            "UPDATE registry.profiles SET body = jsonb_set(body, '{vectors}', %s::jsonb) WHERE model_id = %s",
            (json.dumps(attached), model.id),
        )
    with pytest.raises(openai.BadRequestError) as refused:
        chat(api, model.id)
    assert (
        refused.value.body["code"] == "vectors_not_supported" and "profile 'default'" in refused.value.body["message"]
    )
    assert len(vllm.requests) == asked
    chat(api, model.id, extra_body={"vectors": []})  # without them, the profile's sampling still goes
    assert vllm.requests[-1].body["top_k"] == 7 and "vectors" not in vllm.requests[-1].body
