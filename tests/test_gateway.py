"""The gateway's OpenAI-compatible endpoint over the real stack, called as applications call it: the
official ``openai`` SDK pointed at ``services.gateway_url + "/v1"`` with a tenant's API key, and curl.

- A deployed tiny model answers (the adapter says "bleu", tests/trained_models.py), by id and by name;
  streamed, its deltas join to the unstreamed answer, with a usage chunk when asked.
- A tool model's call comes back as an OpenAI tool call whose arguments parse.
- Another tenant's key gets 404 (the model looks like one that does not exist), a bad key 401, a model
  that is not deployed 404 naming the deploy command; every error is in OpenAI's shape.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import SPANS
from google.protobuf import struct_pb2
from test_datasets_cli import canonical_rows
from test_generate_tools import CALL, MEETING, REQUEST, TOOLS, register_tool_model, save_as_trained
from test_generate_tools import teach as teach_tool_call
from tiny_models import build_qwen2
from trained_models import LORA, QUESTION, build_artifacts, trained_model, upload

from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2
from distillery.teacher.v1 import teacher_pb2

DEPLOY_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    return build_artifacts(tmp_path_factory.mktemp("models"))


def sdk(services, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=services.gateway_url + "/v1", api_key=api_key, max_retries=0, timeout=120)


def deploy(client, model_id: str) -> registry_pb2.Deployment:
    request = registry_pb2.DeployModelRequest(model_id=model_id, engine="local")
    return client.registry.DeployModel(request, timeout=DEPLOY_TIMEOUT_S)


def post(services, path: str, body: bytes, api_key: str | None, content_type: str = "application/json"):
    """(status, parsed JSON body) of a raw POST."""
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(services.gateway_url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def chat(services, api_key: str | None, **body: Any):
    return post(services, "/v1/chat/completions", json.dumps(body).encode(), api_key)


def assert_openai_error(status_and_body, status: int, param: str | None = None, code: str | None = None) -> dict:
    got, body = status_and_body
    assert got == status, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def test_health_keys_and_the_models_list(services, make_tenant, service_registry_for, artifacts):
    with urllib.request.urlopen(services.gateway_url + "/health", timeout=10) as response:
        assert response.status == 200
    tenant, other = make_tenant(), make_tenant()
    model = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, LORA)

    SPANS.clear()
    listed = sdk(services, tenant.api_key).models.list().data
    assert [m.id for m in listed] == [model.id] and listed[0].object == "model"
    # One trace: the gateway's span of the request, and the registry's calls under it.
    (span,) = [s for s in SPANS.get_finished_spans() if s.name == "GET /v1/models"]
    assert span.attributes["http.response.status_code"] == 200
    traced = [s.name for s in SPANS.get_finished_spans() if s.context.trace_id == span.context.trace_id]
    assert any(name.endswith("RegistryService/ListModels") for name in traced), traced
    assert sdk(services, other.api_key).models.list().data == []
    assert sdk(services, tenant.api_key).models.retrieve(model.id).id == model.id
    with pytest.raises(openai.NotFoundError):
        sdk(services, other.api_key).models.retrieve(model.id)

    with pytest.raises(openai.AuthenticationError):
        sdk(services, "dk_" + "x" * 40).models.list()
    error = assert_openai_error(chat(services, None, model=model.id, messages=[]), 401)
    assert error["type"] == "authentication_error" and "API key" in error["message"]
    assert_openai_error(chat(services, "dk_" + "y" * 40, model=model.id, messages=[]), 401)


def test_a_deployed_model_answers_the_openai_sdk(services, make_tenant, client_for, service_registry_for, artifacts):
    tenant, other = make_tenant(), make_tenant()
    model = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, LORA)
    client = sdk(services, tenant.api_key)
    messages = [{"role": "user", "content": QUESTION}]

    # Not deployed yet: 404, saying how to deploy it.
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model=model.id, messages=messages)
    assert f"distillery models deploy {model.id}" in refused.value.message
    assert refused.value.code == "model_not_found"

    deployment = deploy(client_for(tenant), model.id)
    assert deployment.engine == "local" and deployment.endpoint == services.gateway_url + "/v1"
    completion = client.chat.completions.create(model=model.id, messages=messages, max_tokens=8)
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == model.id
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.message.content.strip() == "bleu"
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls
    usage = completion.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    # By name: the newest version of "colours".
    by_name = client.chat.completions.create(model="colours", messages=messages, max_tokens=8)
    assert by_name.choices[0].message.content == choice.message.content

    # Streamed: the deltas join to the same answer; the usage chunk comes last.
    stream = client.chat.completions.create(
        model=model.id, messages=messages, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(deltas) == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == usage.completion_tokens
    assert len({c.id for c in chunks}) == 1

    # Another tenant: the model does not exist for it, exactly like an unknown id.
    with pytest.raises(openai.NotFoundError) as theirs:
        sdk(services, other.api_key).chat.completions.create(model=model.id, messages=messages)
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk(services, other.api_key).chat.completions.create(model="mdl_doesnotexist", messages=messages)
    assert theirs.value.body == {**unknown.value.body, "message": theirs.value.body["message"]}
    assert "deploy" not in theirs.value.message and model.id in theirs.value.message

    # curl, as a snippet would send it.
    body = json.dumps({"model": model.id, "messages": messages, "max_tokens": 8})
    done = subprocess.run(
        ["curl", "-sS", "--fail-with-body", services.gateway_url + "/v1/chat/completions",
         "-H", f"Authorization: Bearer {tenant.api_key}", "-H", "Content-Type: application/json", "-d", body],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(done.stdout)["choices"][0]["message"]["content"] == choice.message.content


def test_a_tool_call_comes_back_with_arguments_that_parse(
    services, make_tenant, client_for, service_registry_for, tmp_path
):
    model_dir = build_qwen2(tmp_path / "student", tools=True)
    save_as_trained(model_dir)
    teach_tool_call(model_dir, CALL + "<|im_end|>")
    tenant = make_tenant()
    model = register_tool_model(services, service_registry_for(tenant), tenant.tenant_id, model_dir)
    deploy(client_for(tenant), model.id)
    client = sdk(services, tenant.api_key)
    # OpenAI function tools; each function in the key order the model was taught with.
    tools = [{"type": "function", "function": tool} for tool in TOOLS]
    messages = [{"role": "user", "content": REQUEST}]

    completion = client.chat.completions.create(model=model.id, messages=messages, tools=tools)
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id and call.function.name == MEETING["name"]
    assert json.loads(call.function.arguments) == {"title": "Team lunch", "minutes": 30}

    # Streamed: the call arrives whole in one delta, then the finish reason.
    chunks = list(client.chat.completions.create(model=model.id, messages=messages, tools=tools, stream=True))
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [
        ("book_meeting", {"title": "Team lunch", "minutes": 30})
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # A named tool_choice offers that one tool only; "none" offers none (then the answer is text).
    plain = client.chat.completions.create(model=model.id, messages=messages, tools=tools, tool_choice="none",
                                           max_tokens=8)  # fmt: skip
    assert plain.choices[0].finish_reason in ("stop", "length") and not plain.choices[0].message.tool_calls


def test_requests_the_endpoint_refuses(services, make_tenant, client_for, service_registry_for, artifacts):
    tenant = make_tenant()
    model = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, LORA)
    deploy(client_for(tenant), model.id)
    key, messages = tenant.api_key, [{"role": "user", "content": QUESTION}]

    bad = post(services, "/v1/chat/completions", b'{"model": "x", "messages": [', key)
    assert "not valid JSON" in assert_openai_error(bad, 400)["message"]
    assert_openai_error(chat(services, key, messages=messages), 400, "model")
    refused = chat(services, key, model="acme:big-model", messages=messages)
    assert "openai, anthropic, google, platform" in assert_openai_error(refused, 400, "model")["message"]
    assert_openai_error(chat(services, key, model=model.id, messages=[]), 400, "messages")
    assert_openai_error(chat(services, key, model=model.id, messages=messages, n=2), 400, "n")
    assert_openai_error(chat(services, key, model=model.id, messages=messages, temperature=3), 400, "temperature")
    too_many = {f"k{i}": "v" for i in range(17)}
    assert_openai_error(chat(services, key, model=model.id, messages=messages, metadata=too_many), 400, "metadata")
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    refused = chat(services, key, model=model.id, messages=messages, response_format=schema)
    assert "local engine" in assert_openai_error(refused, 400, "response_format")["message"]
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]
    refused = chat(services, key, model=model.id, messages=audio)
    assert "/v1/audio/transcriptions" in assert_openai_error(refused, 400, "messages[0].content[0]")["message"]
    remote = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]
    assert_openai_error(chat(services, key, model=model.id, messages=remote), 400,
                        "messages[0].content[0].image_url.url")  # fmt: skip
    image = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
    text_model_image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}]
    assert_openai_error(chat(services, key, model=model.id, messages=text_model_image), 400)  # ReadImage refuses
    huge = b'{"model": "' + b"x" * (31 * 1024 * 1024) + b'"}'
    assert_openai_error(post(services, "/v1/chat/completions", huge, key), 413)
    assert_openai_error(post(services, "/v1/nothing", b"{}", key), 404)


def test_store_and_proxy_mode_capture_traffic_without_keys(
    services, make_tenant, client_for, service_registry_for, artifacts, providers, caplog
):
    caplog.set_level(logging.DEBUG)
    tenant = make_tenant()
    client = client_for(tenant)
    provider_key = "sk-test-" + secrets.token_urlsafe(24)
    request = teacher_pb2.SetProviderKeyRequest(provider=teacher_pb2.PROVIDER_OPENAI, api_key=provider_key)
    client.teacher.SetProviderKey(request)
    openai_client = sdk(services, tenant.api_key)
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Where is my parcel?"}]

    # Proxy mode: the tenant's own provider key, used by the teacher, never seen by the gateway.
    answer = openai_client.chat.completions.create(model="openai:gpt-4.1-mini", messages=messages, store=True,
                                                   metadata={"task": "support"})  # fmt: skip
    assert answer.choices[0].message.content == "Answer brief|Where is my parcel?"
    assert answer.model == "openai:gpt-4.1-mini" and answer.usage.prompt_tokens > 0
    assert providers["openai"].calls[-1].api_key == provider_key
    streamed = openai_client.chat.completions.create(model="openai:gpt-4.1-mini", messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answer.choices[0].message.content

    # A deployed model (registered with its system prompt), by a key that stores its traffic (no "store" sent).
    run_id = f"run_{secrets.token_hex(6)}"
    uri = upload(services, artifacts["lora"], f"tenants/{tenant.tenant_id}/runs/{run_id}/model/")
    registry = service_registry_for(tenant)
    registry.ReserveQuota(registry_pb2.ReserveQuotaRequest(run_id=run_id))
    config = struct_pb2.Struct()
    config.update({"system_prompt": "You translate colours."})
    model = registry.RegisterModel(registry_pb2.RegisterModelRequest(
        run_id=run_id, name="colours", path=3, base_model=str(artifacts["base"]), artifact_kind=LORA,
        artifact_uri=uri, training_config=config,
    ))  # fmt: skip
    deploy(client, model.id)
    admin = [("authorization", f"Bearer {services.admin_token}")]
    storing = client.registry.CreateApiKey(
        registry_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, name="prod", store_traffic=True), metadata=admin
    )
    served = sdk(services, storing.secret).chat.completions.create(
        model=model.id, messages=[{"role": "user", "content": QUESTION}], max_tokens=8
    )
    # Not stored: store=false on a plain key.
    openai_client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "x"}], max_tokens=2)

    records = list(client.ingest.ListTraffic(ingest_pb2.ListTrafficRequest()).records)
    assert [(r.model, r.source) for r in records] == [(model.id, "endpoint"), ("openai:gpt-4.1-mini", "proxy")]
    endpoint, proxy = records
    assert dict(proxy.metadata) == {"task": "support"}
    assert json.loads(proxy.request_json) == {"messages": messages, "tools": []}
    assert json.loads(proxy.response_json) == {"role": "assistant", "content": "Answer brief|Where is my parcel?"}
    assert json.loads(endpoint.response_json)["content"] == served.choices[0].message.content
    # What the model answered under: its system prompt first, then the messages as sent.
    assert json.loads(endpoint.request_json)["messages"] == [
        {"role": "system", "content": "You translate colours."},
        {"role": "user", "content": QUESTION},
    ]
    assert (endpoint.prompt_tokens, endpoint.completion_tokens) == (served.usage.prompt_tokens,
                                                                    served.usage.completion_tokens)  # fmt: skip
    for record in records:
        stored = record.SerializeToString().decode("utf-8", "replace")
        assert provider_key not in stored and tenant.api_key not in stored and storing.secret not in stored
    # Nothing of it in the logs of any service: no key, no content (the logs are there: the captures are logged).
    assert caplog.text.count("traffic captured") == 2
    for secret in (provider_key, tenant.api_key, storing.secret, "Where is my parcel", QUESTION):
        assert secret not in caplog.text

    # The tagged request becomes the next dataset: a pairs row, validated like an upload, keys nowhere in it.
    made = client.ingest.CreateDatasetFromTraffic(
        ingest_pb2.CreateDatasetFromTrafficRequest(metadata={"task": "support"}, display_name="support traffic")
    )
    assert (made.records, made.upload.report.rows, made.upload.report.valid) == (1, 1, True)
    [row] = canonical_rows(services, tenant, made.upload.dataset.id)
    assert row["messages"] == [*messages, {"role": "assistant", "content": "Answer brief|Where is my parcel?"}]
    assert provider_key not in json.dumps(row) and tenant.api_key not in json.dumps(row)


def test_a_speech_model_transcribes_through_the_openai_sdk(
    services, make_tenant, client_for, service_registry_for, tmp_path
):
    from test_transcribe import CLIP, FULL, speech_model, transcribe

    from tests.tiny_models import build_whisper

    whispers = {"base": build_whisper(tmp_path / "base")}
    tenant = make_tenant()
    client = client_for(tenant)
    model = speech_model(services, service_registry_for(tenant), tenant.tenant_id, whispers, FULL)
    deploy(client, model.id)
    expected = transcribe(client, model.id, CLIP.read_bytes(), language="fr")
    audio = sdk(services, tenant.api_key).audio.transcriptions

    with CLIP.open("rb") as clip:
        said = audio.create(model=model.id, file=clip, language="fr")
    assert said.text == expected.text and said.text
    with CLIP.open("rb") as clip:
        verbose = audio.create(model="speech", file=clip, language="fr", response_format="verbose_json")
    assert (verbose.text, verbose.language, verbose.duration) == (expected.text, "fr", expected.duration_s)
    with CLIP.open("rb") as clip:
        assert audio.create(model=model.id, file=clip, language="fr", response_format="text").strip() == said.text
    with CLIP.open("rb") as clip, pytest.raises(openai.BadRequestError) as refused:
        audio.create(model=model.id, file=clip, response_format="srt")
    assert refused.value.body["param"] == "response_format"


def test_an_ocr_model_reads_an_image_content_part(services, make_tenant, client_for, service_registry_for, tmp_path):
    from test_read_image import BUDGET, FULL, ocr_model, page, read

    from tests.tiny_models import build_tiny_vlm

    base = build_tiny_vlm(tmp_path / "base")
    (base / "training_config.json").write_text(json.dumps({"decoding": {"max_new_tokens": BUDGET}}))
    tenant = make_tenant()
    client = client_for(tenant)
    model = ocr_model(services, service_registry_for(tenant), tenant.tenant_id, {"base": base}, FULL)
    deploy(client, model.id)
    image = page()
    expected = read(client, model.id, image).text
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]

    completion = sdk(services, tenant.api_key).chat.completions.create(model=model.id, messages=messages)
    assert completion.choices[0].message.content == expected and expected.strip()
    chunks = list(sdk(services, tenant.api_key).chat.completions.create(model=model.id, messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
