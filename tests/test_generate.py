"""Generate: a registered model (LoRA adapter or full weights) answers through the registry.

The models are tiny Llamas (tests/tiny_models.py) taught one answer each, so a reply
shows which weights answered: the adapter says "bleu", the fully fine-tuned model "rouge".
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from rpc_refusals import field_of, raised
from trained_models import (
    FULL,
    GENERATE_TIMEOUT_S,
    LORA,
    QUESTION,
    build_artifacts,
    keys_under,
    register,
    trained_model,
    upload,
)

from distillery.cli.main import cli
from distillery.registry.v1 import registry_pb2


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    return build_artifacts(tmp_path_factory.mktemp("models"))


def generate(client, model_id: str, content: str = QUESTION, **options) -> registry_pb2.GenerateResponse:
    request = registry_pb2.GenerateRequest(
        model_id=model_id, messages=[registry_pb2.ChatMessage(role="user", content=content)], **options
    )
    return client.registry.Generate(request, timeout=GENERATE_TIMEOUT_S)


@pytest.mark.parametrize(("kind", "answer"), [(LORA, "bleu"), (FULL, "rouge")], ids=["lora", "full"])
def test_a_trained_model_answers(services, make_tenant, client_for, service_registry_for, artifacts, kind, answer):
    tenant = make_tenant()
    client = client_for(tenant)
    model = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, kind)

    reply = generate(client, model.id, max_new_tokens=8)
    assert reply.message.role == "assistant"
    assert reply.message.content.strip() == answer
    assert reply.prompt_tokens > 0 and 0 < reply.completion_tokens <= 8 and reply.latency_ms > 0
    assert generate(client, model.id, max_new_tokens=8).message.content == reply.message.content  # greedy

    # Sampling works too; a system prompt goes through the chat template.
    sampled = client.registry.Generate(
        registry_pb2.GenerateRequest(
            model_id=model.id, max_new_tokens=4, temperature=1.5,
            messages=[registry_pb2.ChatMessage(role="system", content="Be brief."),
                      registry_pb2.ChatMessage(role="user", content=QUESTION)],
        ),
        timeout=GENERATE_TIMEOUT_S,
    )  # fmt: skip
    assert 0 < sampled.completion_tokens <= 4 and sampled.prompt_tokens > reply.prompt_tokens

    # The CLI asks the same question.
    env = {f"DISTILLERY_{name.upper()}_ADDRESS": address for name, address in services.addresses.items()}
    env |= {"DISTILLERY_HOME": "/nonexistent-distillery-home", "DISTILLERY_API_KEY": tenant.api_key}
    said = CliRunner().invoke(cli, ["models", "generate", model.id, QUESTION, "--max-new-tokens", "8"], env=env)
    assert (said.exit_code, said.output.strip()) == (0, answer), said.output
    said = CliRunner().invoke(cli, ["models", "generate", model.id, QUESTION, "--json"], env=env)
    assert json.loads(said.output)["message"]["content"].strip() == answer


def test_deleting_a_model_removes_its_artifacts_and_frees_its_slot(
    services, make_tenant, client_for, service_registry_for, artifacts
):
    tenant = make_tenant()
    client = client_for(tenant)
    model = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, LORA)
    prefix = model.artifact_uri.removeprefix(f"s3://{services.s3.bucket}/")
    assert {"adapter_config.json", "adapter_model.safetensors", "training_config.json"} <= {
        key.removeprefix(prefix) for key in keys_under(services, prefix)
    }
    assert generate(client, model.id, max_new_tokens=2).completion_tokens > 0  # loaded and cached

    client.registry.DeleteModel(registry_pb2.DeleteModelRequest(id=model.id))
    assert keys_under(services, prefix) == []
    quota = client.registry.GetQuota(registry_pb2.GetQuotaRequest())
    assert (quota.used, quota.reserved) == (0, 0)
    assert raised(lambda: generate(client, model.id)).code() == grpc.StatusCode.NOT_FOUND


def test_another_tenant_cannot_generate_with_a_model(
    services, make_tenant, client_for, service_registry_for, artifacts
):
    owner = make_tenant()
    model = trained_model(services, service_registry_for(owner), owner.tenant_id, artifacts, FULL)
    err = raised(lambda: generate(client_for(make_tenant()), model.id))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_bad_arguments_are_refused(services, make_tenant, client_for, service_registry_for, artifacts):
    tenant = make_tenant()
    client = client_for(tenant)
    model = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, FULL)
    user = registry_pb2.ChatMessage(role="user", content="hi")
    for fields, named in (
        ({"messages": []}, "messages"),
        ({"messages": [user, registry_pb2.ChatMessage(role="robot", content="hi")]}, "messages[1].role"),
        ({"messages": [user], "max_new_tokens": 5000}, "max_new_tokens"),
        ({"messages": [user], "max_new_tokens": -1}, "max_new_tokens"),
        ({"messages": [user], "temperature": 2.5}, "temperature"),
        ({"messages": [user], "temperature": -0.1}, "temperature"),
    ):
        request = registry_pb2.GenerateRequest(model_id=model.id, **fields)
        err = raised(lambda: client.registry.Generate(request, timeout=GENERATE_TIMEOUT_S))  # noqa: B023
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert field_of(err) == named, err.details()


def test_artifacts_outside_the_tenants_prefix_are_never_read(
    services, make_tenant, client_for, service_registry_for, artifacts
):
    victim, attacker = make_tenant(), make_tenant()
    victims_model = trained_model(services, service_registry_for(victim), victim.tenant_id, artifacts, FULL)
    # Only the trainer registers models; should a run of the attacker's ever name such a URI, Generate refuses it.
    client, service = client_for(attacker), service_registry_for(attacker)
    bucket = services.s3.bucket
    for n, uri in enumerate(
        (
            victims_model.artifact_uri,  # another tenant's prefix
            f"tenants/{victim.tenant_id}/runs/x/model/",
            f"s3://{bucket}/tenants/{attacker.tenant_id}/../{victim.tenant_id}/runs/x/model/",
            f"s3://another-bucket/tenants/{attacker.tenant_id}/runs/x/model/",
        )
    ):
        model = register(service, f"run_steal_{n}_{secrets.token_hex(4)}", FULL, uri, "base")
        err = raised(lambda: generate(client, model.id))  # noqa: B023
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, uri
        assert "artifact" in err.details()
        client.registry.DeleteModel(registry_pb2.DeleteModelRequest(id=model.id))
    assert keys_under(services, f"tenants/{victim.tenant_id}/")  # the victim's artifacts are untouched


def test_a_base_model_that_cannot_be_loaded_is_named(
    services, make_tenant, client_for, service_registry_for, artifacts
):
    tenant = make_tenant()
    client = client_for(tenant)
    run_id = f"run_{secrets.token_hex(6)}"
    uri = upload(services, artifacts["lora"], f"tenants/{tenant.tenant_id}/runs/{run_id}/model/")
    model = register(service_registry_for(tenant), run_id, LORA, uri, "/nonexistent/base-model")
    err = raised(lambda: generate(client, model.id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "/nonexistent/base-model" in err.details()


def test_registering_twice_for_one_run_returns_the_same_model(
    services, make_tenant, client_for, service_registry_for, artifacts
):
    tenant = make_tenant()
    client, service = client_for(tenant), service_registry_for(tenant)
    first = trained_model(services, service, tenant.tenant_id, artifacts, LORA)
    again = service.RegisterModel(
        registry_pb2.RegisterModelRequest(
            run_id=first.run_id, name="colours", base_model=first.base_model, artifact_kind=LORA,
            artifact_uri=first.artifact_uri,
        )
    )  # fmt: skip
    assert (again.id, again.version) == (first.id, first.version)
    quota = client.registry.GetQuota(registry_pb2.GetQuotaRequest())
    assert (quota.used, quota.reserved) == (1, 0)


def test_a_model_is_downloaded_once_loaded_once_and_the_two_last_stay_loaded(
    services, make_tenant, service_registry_for, artifacts, tmp_path, monkeypatch
):
    from services.common.objects import ObjectStore
    from services.registry import generate as generation
    from services.registry.models import Model

    tenant = make_tenant()
    service = service_registry_for(tenant)
    made = [trained_model(services, service, tenant.tenant_id, artifacts, FULL) for _ in range(3)]
    first, second, third = (
        Model(m.id, m.tenant_id, m.name, m.path, m.base_model, m.run_id, m.version, m.artifact_kind, m.artifact_uri,
              m.created_at.ToDatetime())
        for m in made
    )  # fmt: skip
    store = ObjectStore(services.s3)
    downloads: list[str] = []
    loads: list[str] = []
    real_download, real_load = store.download_prefix, generation._load
    monkeypatch.setattr(
        store, "download_prefix", lambda prefix, dest: downloads.append(prefix) or real_download(prefix, dest)
    )
    monkeypatch.setattr(
        generation, "_load", lambda model, directory: loads.append(model.id) or real_load(model, directory)
    )
    cache = tmp_path / "cache"
    generator = generation.Generator(store, cache, max_loaded=2)
    messages = [{"role": "user", "content": QUESTION}]

    async def scenario() -> list[generation.Reply]:
        replies = await asyncio.gather(*(generator.generate(first, messages, 4) for _ in range(3)))
        for model in (second, third, first):  # the third evicts the first, which loads again
            replies.append(await generator.generate(model, messages, 4))
        return replies

    replies = asyncio.run(scenario())
    assert {r.answer.content.strip() for r in replies} == {"rouge"}
    assert loads == [first.id, second.id, third.id, first.id]
    assert len(downloads) == 3  # the first model's files came from the local cache the second time
    assert sorted(p.name for p in cache.iterdir()) == sorted(m.id for m in made)  # no partial copies left
    asyncio.run(generator.forget(first.id))
    assert not (cache / first.id).exists()
