"""GetSnippet: every snippet the registry serves is run against a running stack and answers
as a direct Generate call does (greedy decoding, so the same text).

- python: run as a script by this interpreter;
- cli: its words given to the real CLI;
- grpcurl: run by a shell in which ``grpcurl`` records the words it was given; those words
  are then replayed as grpcurl replays them (the method found through the registry's server
  reflection, the ``-d`` JSON parsed against the reflected request type, the ``-H`` header
  sent as metadata, plaintext). Where grpcurl itself is installed, it runs the snippet too.

There is no curl snippet: the services speak gRPC only and no HTTP gateway stands in front.
"""

from __future__ import annotations

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
    services, make_tenant, client_for, service_registry_for, artifacts
):
    tenant = make_tenant()
    client = client_for(tenant)
    model = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, FULL)
    served = dict(client.registry.GetSnippet(registry_pb2.GetSnippetRequest(model_id=model.id)).snippets)
    assert sorted(served) == sorted(SNIPPET_LANGUAGES), "the CLI's --language choices are what the registry serves"
    for language in SNIPPET_LANGUAGES:
        one = client.registry.GetSnippet(registry_pb2.GetSnippetRequest(model_id=model.id, language=language))
        assert dict(one.snippets) == {language: served[language]}
    refused = None
    try:
        client.registry.GetSnippet(registry_pb2.GetSnippetRequest(model_id=model.id, language="curl"))
    except grpc.RpcError as err:
        refused = err
    assert refused is not None and refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "grpcurl, python, cli" in refused.details()

    # What every snippet asks: "Hello" in a user turn, up to 128 new tokens, greedy.
    expected = client.registry.Generate(
        registry_pb2.GenerateRequest(
            model_id=model.id, messages=[registry_pb2.ChatMessage(role="user", content="Hello")], max_new_tokens=128
        ),
        timeout=GENERATE_TIMEOUT_S,
    ).message.content
    assert expected.strip()
    env = cli_env(services, tenant.api_key)

    ran = subprocess.run(
        [sys.executable, "-c", served["python"]], env={**os.environ, **env}, capture_output=True, text=True,
        timeout=GENERATE_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert (ran.returncode, ran.stdout) == (0, expected + "\n"), ran.stderr

    words = shlex.split(served["cli"])
    assert words[0] == "distillery"
    said = CliRunner().invoke(cli, words[1:], env=env)
    assert (said.exit_code, said.output.strip()) == (0, expected.strip()), said.output

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
