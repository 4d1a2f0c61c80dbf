"""A tool model through Generate answers as its run measured it: one rendering, byte for byte, and answers
that are what they look like.

- The prompt ``Generate`` asks a tool model with is token for token the prompt the tool-calling recipe
  evaluated it with, rendered in another process from the training row's JSON (native and fallback
  formats; tools with whole numbers and their own key order, which a protobuf Struct would have changed).
- A model registered with its tools offers them (``model_tools``, ``models generate --tools``) in
  training order, and ``models show`` lists them.
- Finish reasons: ``tool_calls`` for calls (arguments as JSON text, whole numbers kept), ``stop`` for
  text, ``length`` at the cap; an answer that opens a ``<tool_call>`` block that never parses (a key
  repeated until the token cap) is an invalid call with its raw text, not content.

The models are tiny Qwen2s/Llamas (tests/tiny_models.py), some taught one answer by a few optimiser steps.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from google.protobuf import json_format, struct_pb2
from rpc_refusals import assert_refused
from test_tracing_and_cli import cli_env
from tiny_models import build_llama, build_qwen2
from trained_models import GENERATE_TIMEOUT_S, optimise, upload

from distillery.cli.main import cli
from distillery.registry.v1 import registry_pb2
from services.common import tool_format

FULL = registry_pb2.ARTIFACT_KIND_FULL_WEIGHTS
SYSTEM = "You book meetings for the team."
REQUEST = "Book a 30 minute meeting called Team lunch."
# Keys in an order of their own and whole numbers: what a Struct reorders and turns into doubles.
MEETING = {
    "parameters": {
        "required": ["title", "minutes"],
        "type": "object",
        "properties": {"title": {"type": "string"}, "minutes": {"type": "integer", "minimum": 5, "maximum": 480}},
    },
    "name": "book_meeting",
    "description": "Book a meeting.",
}
WEATHER = {
    "name": "get_weather",
    "description": "Weather now in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOLS = [MEETING, WEATHER]
CALL = '<tool_call>\n{"name": "book_meeting", "arguments": {"title": "Team lunch", "minutes": 30}}\n</tool_call>'
RUNAWAY = '<tool_call>\n{"name": "book_meeting", "arguments": {"title": "Team lunch"' + ', "minutes": 30' * 12


def training_row() -> dict[str, Any]:
    """A canonical tool-call row as the recipe reads it from its eval split."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "book_meeting", "arguments": '{"title": "Team lunch", "minutes": 30}'}}  # fmt: skip
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": REQUEST},
            {"role": "assistant", "content": "", "tool_calls": [call]},
        ],
        "tools": TOOLS,
    }


# The recipe's side, in a process of its own (its own hash seed): the eval prompt's token ids.
_RECIPE_PROMPT = """
import json, sys
from transformers import AutoTokenizer
from services.common import tool_format
from services.trainer.recipes import tool_calling

tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
row = json.loads(sys.stdin.read())
examples = tool_calling.eval_examples([row], tool_format.detect(tokenizer), tokenizer)
print(json.dumps(tokenizer(examples["prompts"][0], add_special_tokens=False)["input_ids"]))
"""


def recipe_prompt_ids(model_dir: Path, row: dict[str, Any]) -> list[int]:
    env = {**os.environ, "PYTHONHASHSEED": str(secrets.randbelow(10_000) + 1)}
    done = subprocess.run(
        [sys.executable, "-c", _RECIPE_PROMPT, str(model_dir)], input=json.dumps(row), capture_output=True,
        text=True, env=env, timeout=120, check=True, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def save_as_trained(model_dir: Path) -> None:
    """training_config.json as the tool-calling recipe writes it: the format, the system prompt, the decoding."""
    from transformers import AutoTokenizer

    fmt = tool_format.detect(AutoTokenizer.from_pretrained(model_dir))
    config = {"tool_format": fmt.name, "tool_format_detail": fmt.to_dict(), "system_prompt": SYSTEM,
              "decoding": {"max_new_tokens": 96, "temperature": 0.0}}  # fmt: skip
    (model_dir / "training_config.json").write_text(json.dumps(config))


def register_tool_model(services, registry, tenant_id: str, model_dir: Path) -> registry_pb2.Model:
    run_id = f"run_{secrets.token_hex(6)}"
    uri = upload(services, model_dir, f"tenants/{tenant_id}/runs/{run_id}/model/")
    registry.ReserveQuota(registry_pb2.ReserveQuotaRequest(run_id=run_id))
    return registry.RegisterModel(
        registry_pb2.RegisterModelRequest(
            run_id=run_id, name="meetings", path=1, base_model=str(model_dir), artifact_kind=FULL, artifact_uri=uri,
            tools_json=[tool_format.tool_json(tool) for tool in TOOLS],
        )
    )  # fmt: skip


def ask(client, model_id: str, **options: Any) -> registry_pb2.GenerateResponse:
    request = registry_pb2.GenerateRequest(
        model_id=model_id, messages=[registry_pb2.ChatMessage(role="user", content=REQUEST)], **options
    )
    return client.registry.Generate(request, timeout=GENERATE_TIMEOUT_S)


def teach(model_dir: Path, answer: str, steps: int = 150) -> None:
    """A few optimiser steps on the prompt ``Generate`` builds for REQUEST, so greedy decoding says ``answer``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": REQUEST}]
    prompt = tool_format.prompt_ids(tool_format.detect(tokenizer), tokenizer, messages, TOOLS)
    ids = torch.tensor([prompt + tokenizer(answer, add_special_tokens=False)["input_ids"]])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100
    optimise(model, ids, labels, steps, lr=3e-3)
    model.save_pretrained(model_dir)


@pytest.mark.parametrize("native", [True, False], ids=["native", "fallback"])
def test_generate_asks_a_tool_model_with_the_prompt_its_evaluation_used(
    services, make_tenant, client_for, service_registry_for, tmp_path, native
):
    model_dir = (build_qwen2 if native else build_llama)(tmp_path / "student", tools=native)
    save_as_trained(model_dir)
    tenant = make_tenant()
    model = register_tool_model(services, service_registry_for(tenant), tenant.tenant_id, model_dir)
    assert [json.loads(text) for text in model.tools_json] == TOOLS  # as trained: order and whole numbers

    expected = recipe_prompt_ids(model_dir, training_row())
    reply = ask(client_for(tenant), model.id, model_tools=True, return_prompt_token_ids=True, max_new_tokens=1)
    assert list(reply.prompt_token_ids) == expected
    assert reply.prompt_tokens == len(expected)

    # The same tools sent as JSON text in another order of the list are another prompt: order is kept.
    swapped = ask(client_for(tenant), model.id, return_prompt_token_ids=True, max_new_tokens=1,
                  tools_json=[tool_format.tool_json(tool) for tool in reversed(TOOLS)])  # fmt: skip
    assert list(swapped.prompt_token_ids) != expected
    # What this test guards against: the tools through a protobuf Struct render differently.
    through_struct = [json_format.MessageToDict(json_format.ParseDict(tool, struct_pb2.Struct())) for tool in TOOLS]
    assert recipe_prompt_ids(model_dir, {**training_row(), "tools": through_struct}) != expected


def test_a_model_knows_its_tools(services, make_tenant, client_for, service_registry_for, tmp_path):
    model_dir = build_qwen2(tmp_path / "student", tools=True)
    save_as_trained(model_dir)
    teach(model_dir, CALL + "<|im_end|>")
    tenant = make_tenant()
    model = register_tool_model(services, service_registry_for(tenant), tenant.tenant_id, model_dir)
    client = client_for(tenant)

    reply = ask(client, model.id, model_tools=True)
    assert reply.finish_reason == "tool_calls", reply
    (call,) = reply.message.tool_calls
    assert call.name == "book_meeting" and call.arguments_json == '{"title": "Team lunch", "minutes": 30}'
    assert reply.message.content == "" and not reply.invalid_tool_calls
    # Without tools the same model is asked another prompt; its answer is text, however odd.
    assert ask(client, model.id, max_new_tokens=8).finish_reason in ("stop", "length")

    env = cli_env(services, tenant.api_key)
    said = CliRunner().invoke(cli, ["models", "generate", model.id, REQUEST, "--tools"], env=env)
    assert said.exit_code == 0 and said.output.strip() == 'call book_meeting {"title": "Team lunch", "minutes": 30}'
    shown = CliRunner().invoke(cli, ["models", "show", model.id], env=env)
    assert shown.exit_code == 0 and "book_meeting" in shown.output and "get_weather" in shown.output
    assert shown.output.index("book_meeting") < shown.output.index("get_weather")  # training order


def test_a_runaway_call_is_an_invalid_call_cut_at_the_cap(
    services, make_tenant, client_for, service_registry_for, tmp_path
):
    """The answer a user found: ``"minutes": 30`` repeated until the token cap. Not an answer, and not text."""
    model_dir = build_qwen2(tmp_path / "student", tools=True)
    save_as_trained(model_dir)
    teach(model_dir, RUNAWAY)
    tenant = make_tenant()
    model = register_tool_model(services, service_registry_for(tenant), tenant.tenant_id, model_dir)

    reply = ask(client_for(tenant), model.id, model_tools=True, max_new_tokens=30)
    assert reply.finish_reason == "length" and reply.completion_tokens == 30
    (invalid,) = reply.invalid_tool_calls
    assert invalid.error == "unclosed_tool_call" and invalid.raw.startswith('<tool_call>\n{"name": "book_meeting"')
    assert reply.message.content == "" and not reply.message.tool_calls

    said = CliRunner().invoke(cli, ["models", "generate", model.id, REQUEST, "--tools", "--max-new-tokens", "30"],
                              env=cli_env(services, tenant.api_key))  # fmt: skip
    assert said.exit_code == 0 and "invalid tool call (unclosed_tool_call)" in said.output
    assert "cut off at 30 tokens" in said.output


def test_model_tools_on_a_model_without_tools_is_refused(
    services, make_tenant, client_for, service_registry_for, tmp_path
):
    model_dir = build_llama(tmp_path / "plain")
    tenant = make_tenant()
    registry = service_registry_for(tenant)
    run_id = f"run_{secrets.token_hex(6)}"
    uri = upload(services, model_dir, f"tenants/{tenant.tenant_id}/runs/{run_id}/model/")
    registry.ReserveQuota(registry_pb2.ReserveQuotaRequest(run_id=run_id))
    model = registry.RegisterModel(registry_pb2.RegisterModelRequest(
        run_id=run_id, name="plain", path=3, base_model=str(model_dir), artifact_kind=FULL, artifact_uri=uri,
    ))  # fmt: skip
    client = client_for(tenant)
    assert_refused(lambda: ask(client, model.id, model_tools=True), "model_tools", grpc.StatusCode.FAILED_PRECONDITION)
    assert_refused(lambda: ask(client, model.id, tools_json=["{not json"]), "tools_json[0]")
