"""GetSnippet: every snippet the registry serves is run against a running stack and answers as a direct
Generate call does (greedy decoding, so the same text).

- curl and python (the official ``openai`` SDK): the gateway's OpenAI-compatible endpoint, at the registry's
  gateway_url, for a deployed model; run exactly as printed (a shell; this interpreter), the key only in
  ``$DISTILLERY_API_KEY``;
- cli: its words given to the real CLI;
- grpcurl: run by a shell in which ``grpcurl`` records the words it was given; those words
  are then replayed as grpcurl replays them (the method found through the registry's server
  reflection, the ``-d`` JSON parsed against the reflected request type, the ``-H`` header
  sent as metadata, plaintext). Where grpcurl itself is installed, it runs the snippet too;
- typescript: where node and the ``openai`` npm package are installed, run too; else its shape is checked.

Speech and OCR snippets: what their curl sends (recorded by a stand-in ``curl`` in the shell) is the request
the endpoint takes (a multipart clip; an image_url part holding the file as a base64 data: URL).
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
import sys

import grpc
import test_generate
from click.testing import CliRunner
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from test_tracing_and_cli import cli_env
from trained_models import FULL, GENERATE_TIMEOUT_S, trained_model

from distillery.cli.main import cli
from distillery.cli.models import SNIPPET_LANGUAGES
from distillery.registry.v1 import registry_pb2
from services.registry import snippets

artifacts = test_generate.artifacts  # the fixture: tiny trained models, as test_generate makes them
RECORD_ARGS = (
    f'grpcurl() {{ {shlex.quote(sys.executable)} -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@"; }}'
)


def grpcurl_words(snippet: str, env: dict[str, str]) -> list[str]:
    """The words a shell hands to grpcurl when it runs ``snippet``."""
    done = subprocess.run(
        ["bash", "-c", f"{RECORD_ARGS}\n{snippet}"], env={"PATH": os.environ["PATH"], **env},
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def as_grpcurl_would(words: list[str]) -> str:
    """Replay grpcurl's words over gRPC: -plaintext, -H metadata, -d JSON, ADDRESS, SERVICE/METHOD;
    returns the answer's message content."""
    assert words[0] == "-plaintext", words
    options, (address, method) = words[1:-2], words[-2:]
    metadata, data = [], None
    while options:
        flag, value, *options = options
        if flag == "-H":
            key, _, text = value.partition(":")
            metadata.append((key.strip().lower(), text.strip()))
        elif flag == "-d":
            data = value
        else:
            raise AssertionError(f"grpcurl flag {flag!r} is not one this replay knows")
    service_name, method_name = method.split("/")
    with grpc.insecure_channel(address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        found = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_class = message_factory.GetMessageClass(found.input_type)
        reply_class = message_factory.GetMessageClass(found.output_type)
        request = json_format.Parse(data, request_class())
        call = channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=reply_class.FromString,
        )
        reply = call(request, metadata=metadata, timeout=GENERATE_TIMEOUT_S)
    return json_format.MessageToDict(reply, preserving_proto_field_name=True)["message"]["content"]


def test_every_snippet_the_registry_serves_runs_against_the_stack(
    services, make_tenant, client_for, service_registry_for, artifacts, tmp_path
):
    tenant = make_tenant()
    client = client_for(tenant)
    model = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, FULL)
    served = dict(client.registry.GetSnippet(registry_pb2.GetSnippetRequest(model_id=model.id)).snippets)
    assert sorted(served) == sorted(SNIPPET_LANGUAGES), "the CLI's --lang choices are what the registry serves"
    for language in SNIPPET_LANGUAGES:
        one = client.registry.GetSnippet(registry_pb2.GetSnippetRequest(model_id=model.id, language=language))
        assert dict(one.snippets) == {language: served[language]}
        assert tenant.api_key not in served[language]
        assert (
            language == "cli" or "$DISTILLERY_API_KEY" in served[language] or "DISTILLERY_API_KEY" in served[language]
        )
    for language in ("curl", "python", "typescript"):
        assert f"{services.gateway_url}/v1" in served[language], served[language]
    refused = None
    try:
        client.registry.GetSnippet(registry_pb2.GetSnippetRequest(model_id=model.id, language="fortran"))
    except grpc.RpcError as err:
        refused = err
    assert refused is not None and refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "curl, python, typescript, grpcurl, cli" in refused.details()

    # What every snippet asks: "Hello" in a user turn, up to 128 new tokens, greedy.
    expected = client.registry.Generate(
        registry_pb2.GenerateRequest(
            model_id=model.id, messages=[registry_pb2.ChatMessage(role="user", content="Hello")], max_new_tokens=128
        ),
        timeout=GENERATE_TIMEOUT_S,
    ).message.content
    assert expected.strip()
    env = cli_env(services, tenant.api_key)
    run_env = {**os.environ, **env}

    # The endpoint serves deployed models: curl and the openai SDK, exactly as printed.
    client.registry.DeployModel(registry_pb2.DeployModelRequest(model_id=model.id, engine="local"),
                                timeout=GENERATE_TIMEOUT_S)  # fmt: skip
    ran = subprocess.run(["bash", "-c", served["curl"]], env=run_env, capture_output=True, text=True,
                         timeout=GENERATE_TIMEOUT_S, check=False)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["choices"][0]["message"]["content"] == expected, ran.stdout
    ran = subprocess.run(
        [sys.executable, "-c", served["python"]], env=run_env, capture_output=True, text=True,
        timeout=GENERATE_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert (ran.returncode, ran.stdout) == (0, expected + "\n"), ran.stderr
    if shutil.which("node") and subprocess.run(["node", "-e", "require.resolve('openai')"], capture_output=True,
                                               cwd=tmp_path, check=False).returncode == 0:  # fmt: skip
        (tmp_path / "snippet.mjs").write_text(served["typescript"])
        ran = subprocess.run(["node", "snippet.mjs"], env=run_env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=GENERATE_TIMEOUT_S, check=False)  # fmt: skip
        assert (ran.returncode, ran.stdout) == (0, expected + "\n"), ran.stderr
    else:
        assert (
            'import OpenAI from "openai"' in served["typescript"]
            and "process.env.DISTILLERY_API_KEY" in served["typescript"]
        )

    words = shlex.split(served["cli"])
    assert words[0] == "distillery"
    said = CliRunner().invoke(cli, words[1:], env=env)
    assert (said.exit_code, said.output.strip()) == (0, expected.strip()), said.output
    printed = CliRunner().invoke(cli, ["models", "snippet", model.id, "--lang", "curl"], env=env)
    assert (printed.exit_code, printed.output) == (0, served["curl"] + "\n")

    words = grpcurl_words(served["grpcurl"], env)
    assert words[-2:] == [services.address("registry"), "distillery.registry.v1.RegistryService/Generate"]
    assert ["-H", f"authorization: Bearer {tenant.api_key}"] == words[1:3]
    assert as_grpcurl_would(words) == expected
    if shutil.which("grpcurl"):
        ran = subprocess.run(
            ["bash", "-c", served["grpcurl"]], env={**os.environ, **env}, capture_output=True, text=True,
            timeout=GENERATE_TIMEOUT_S, check=False,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["message"]["content"] == expected
    client.registry.UndeployModel(registry_pb2.UndeployModelRequest(model_id=model.id))


# A stand-in curl: its words, then what it read from stdin (for --data-binary @-), as JSON.
_RECORDER = "import json, sys; print(json.dumps([sys.argv[1:], sys.stdin.read() if '@-' in sys.argv else '']))"
RECORD_CURL = f'curl() {{ {shlex.quote(sys.executable)} -c {shlex.quote(_RECORDER)} "$@"; }}'


def curl_sent(snippet: str, cwd) -> tuple[list[str], str]:
    done = subprocess.run(
        ["bash", "-c", f"{RECORD_CURL}\n{snippet}"], env={"PATH": os.environ["PATH"], "DISTILLERY_API_KEY": "dk_x"},
        cwd=cwd, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    words, body = json.loads(done.stdout)
    return words, body


def test_speech_and_ocr_snippets_send_what_the_endpoint_takes(tmp_path):
    base = "http://gateway.test:8080"
    speech = snippets.for_model("mdl_speech", gateway_url=base, speech=True)
    words, _ = curl_sent(speech["curl"], tmp_path)
    assert f"{base}/v1/audio/transcriptions" in words and "Authorization: Bearer dk_x" in words
    assert words[-4:] == ["-F", "model=mdl_speech", "-F", "file=@clip.wav"]
    assert "client.audio.transcriptions.create(" in speech["python"] and "/Transcribe" in speech["grpcurl"]

    (tmp_path / "page.png").write_bytes(b"\x89PNG not really")
    ocr = snippets.for_model("mdl_ocr", gateway_url=base, ocr=True)
    words, body = curl_sent(ocr["curl"], tmp_path)
    assert f"{base}/v1/chat/completions" in words
    (part,) = json.loads(body)["messages"][0]["content"]
    image = base64.b64encode(b"\x89PNG not really").decode()
    assert part == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}
    assert '"image_url"' in ocr["python"] and "image_url" in ocr["typescript"]

    # A registry that does not know the gateway's URL: the snippets read it when they run.
    unknown = snippets.for_model("mdl_x")
    assert '"$DISTILLERY_GATEWAY_URL/v1/chat/completions"' in unknown["curl"]
    assert 'os.environ["DISTILLERY_GATEWAY_URL"] + "/v1"' in unknown["python"]


def test_snippets_carry_the_profile_by_reference_and_inline(
    services, make_tenant, client_for, service_registry_for, artifacts
):
    """The curl and python snippets of a model with a profile, run as printed (by reference and --inline), answer
    as Generate does with that profile; --custom holds placeholders, not the key's variable."""
    tenant = make_tenant()
    client = client_for(tenant)
    model = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, FULL)
    sampling = registry_pb2.Sampling(strategy="greedy", stop=["ug"], max_tokens=24, repetition_penalty=1.0)
    client.registry.SetProfile(registry_pb2.SetProfileRequest(model_id=model.id, name="terse", sampling=sampling))
    hello = [registry_pb2.ChatMessage(role="user", content="Hello")]
    expected = client.registry.Generate(
        registry_pb2.GenerateRequest(model_id=model.id, messages=hello, profile="terse"), timeout=GENERATE_TIMEOUT_S
    ).message.content
    plain = client.registry.Generate(
        registry_pb2.GenerateRequest(model_id=model.id, messages=hello, profile="none"), timeout=GENERATE_TIMEOUT_S
    ).message.content
    assert expected != plain and "ug" in plain, (expected, plain)  # the profile visibly changes this answer

    client.registry.DeployModel(registry_pb2.DeployModelRequest(model_id=model.id, engine="local"),
                                timeout=GENERATE_TIMEOUT_S)  # fmt: skip
    run_env = {**os.environ, **cli_env(services, tenant.api_key)}
    for inline in (False, True):
        served = client.registry.GetSnippet(
            registry_pb2.GetSnippetRequest(model_id=model.id, profile="terse", inline=inline)
        ).snippets
        if inline:
            assert '"stop": ["ug"]' in served["curl"] and '"profile": "none"' in served["curl"]
            assert 'extra_body={"repetition_penalty": 1.0, "profile": "none"}' in served["python"]
        else:
            assert '"profile": "terse"' in served["curl"] and 'extra_body={"profile": "terse"}' in served["python"]
            assert "--profile terse" in served["cli"]
        ran = subprocess.run(["bash", "-c", served["curl"]], env=run_env, capture_output=True, text=True,
                             timeout=GENERATE_TIMEOUT_S, check=False)  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["choices"][0]["message"]["content"] == expected, (inline, ran.stdout)
        ran = subprocess.run([sys.executable, "-c", served["python"]], env=run_env, capture_output=True, text=True,
                             timeout=GENERATE_TIMEOUT_S, check=False)  # fmt: skip
        assert (ran.returncode, ran.stdout) == (0, expected + "\n"), (inline, ran.stderr)
    client.registry.UndeployModel(registry_pb2.UndeployModelRequest(model_id=model.id))

    custom = client.registry.GetSnippet(
        registry_pb2.GetSnippetRequest(model_id=model.id, profile="terse", custom=True)
    ).snippets
    assert "YOUR_API_KEY" in custom["curl"] and "DISTILLERY_API_KEY" not in custom["curl"] + custom["python"]
    assert f"{services.gateway_url}/v1" in custom["python"]
    printed = CliRunner().invoke(
        cli, ["models", "snippet", model.id, "--lang", "python", "--profile", "terse", "--inline", "--custom"],
        env=cli_env(services, tenant.api_key),
    )  # fmt: skip
    assert printed.exit_code == 0 and 'api_key="YOUR_API_KEY"' in printed.output and "stop=" in printed.output
