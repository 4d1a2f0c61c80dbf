"""Distillation - Tool Calling end to end through the real services, a real Ray head and the
real recipe: tools imported -> the teacher writes verified trajectories (GENERATING) ->
split -> SFT -> evaluation of the base and SFT students -> registered model -> Generate
with tools. (GRPO after SFT runs through Ray in tests/test_tool_recipe.py; here a tiny
student trained on a teacher this regular gives completions whose rewards do not vary,
which the recipe's dry run refuses.) The student is a tiny Llama built from a
config; the teacher a local OpenAI-protocol server answering like a teacher that knows
the weather tool."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from provider_servers import Answer, Call
from test_services import upload
from test_tool_trajectories import WEATHER, import_tools
from test_training import states, watch
from tiny_models import build_llama

from distillery.common.v1 import common_pb2
from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2
from distillery.trainer.v1 import trainer_pb2 as pb

CITIES = ("Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Quito")
SEEDS = [f"What's the weather in {city}?" for city in CITIES]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "tools" / "weather_calls.jsonl"
SFT = pb.SftSettings(max_steps=150, learning_rate=5e-3, batch_size=4, lora_r=8, checkpoint_every_steps=150)


def city_of(text: str) -> str:
    return next((c for c in CITIES if c in text), CITIES[0])


UNITS = itertools.cycle([{"units": "celsius"}, {"units": "fahrenheit"}, {}])


def weather_teacher(call: Call) -> Answer:
    """Rewordings, requests no tool fits, one weather call per request (units varying, as a teacher's
    choices do: GRPO needs completions that differ), simulated results, answers."""
    system, user = call.system_text, call.user_text
    if "Rewrite the user's request" in system:
        n = int(system.split("in ")[1].split(" different ways")[0])
        return Answer(text=json.dumps({"prompts": [f"{user} Please tell me ({i})." for i in range(n)]}))
    if "none of these tools can serve" in system:
        n = int(system.split("Write ")[1].split(" requests")[0])
        return Answer(text=json.dumps({"prompts": [f"Tell me a joke about {city_of(user)} ({i})" for i in range(n)]}))
    if system.startswith("You are the get_weather API"):
        return Answer(text=json.dumps({"city": json.loads(user)["city"], "temperature_c": 21}))
    messages = call.body["messages"]
    if messages[-1]["role"] == "tool":
        return Answer(text=f"It is 21 degrees in {city_of(user)}.")
    if "joke" in user:
        return Answer(text="Why did the cloud stay home? It was under the weather.")
    return Answer(tool_calls=[("get_weather", {"city": city_of(user), **next(UNITS)})])


def test_distill_tools_generates_verifies_trains_evaluates_and_registers(
    services, client_for, make_tenant, providers, tmp_path
):
    providers["platform"].responder = weather_teacher
    client = client_for(make_tenant())
    (weather,) = import_tools(client, WEATHER)
    student = str(build_llama(tmp_path / "tiny-llama"))
    run = client.trainer.CreateRun(pb.CreateRunRequest(
        path=common_pb2.TRAINING_PATH_DISTILL_TOOLS, student_model=student, teacher="platform:tool-teacher",
        tool_ids=[weather], seed_prompts=SEEDS, objectives=["Be brief."], sft=SFT, eval_fraction=0.2,
        model_name="weather-caller",
    ))  # fmt: skip
    events = watch(client, run.id, timeout=600)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
    assert states(events) == [
        pb.RUN_STATE_QUEUED, pb.RUN_STATE_VALIDATING, pb.RUN_STATE_GENERATING, pb.RUN_STATE_TRAINING,
        pb.RUN_STATE_EVALUATING, pb.RUN_STATE_REGISTERING, pb.RUN_STATE_SUCCEEDED,
    ]  # fmt: skip
    metrics = done.metrics
    # 6 seeds + 12 rewordings + 4-5 no-tool prompts, 2 trajectories each, all verified.
    assert metrics["teacher_rows"] >= 40 and metrics["teacher_rows_rejected"] == 0
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    for stage in ("base", "sft"):
        for rate in ("valid_call_rate", "right_tool_rate", "schema_valid_rate", "args_match_rate", "correct_rate"):
            assert 0.0 <= metrics[f"{stage}_{rate}"] <= 1.0, (stage, rate)
    assert metrics["sft_correct_rate"] >= metrics["base_correct_rate"]
    assert "grpo_correct_rate" not in metrics  # SFT only

    model = client.registry.GetModel(registry_pb2.GetModelRequest(id=done.model_id))
    assert model.path == common_pb2.TRAINING_PATH_DISTILL_TOOLS and model.name == "weather-caller"
    assert model.metrics["sft_correct_rate"] == metrics["sft_correct_rate"]
    # Generate with the tools offered answers in the shape of the API: structured calls or text.
    reply = client.registry.Generate(registry_pb2.GenerateRequest(
        model_id=done.model_id, messages=[registry_pb2.ChatMessage(role="user", content=SEEDS[0])],
        tools=[json_format.ParseDict(WEATHER["function"], struct_pb2.Struct())], max_new_tokens=48,
    ))  # fmt: skip
    assert reply.completion_tokens > 0
    assert all(call.name and call.id.startswith("call_") for call in reply.message.tool_calls)


def test_an_openai_format_tool_dataset_trains_as_it_is(services, client_for, make_tenant, tmp_path):
    client = client_for(make_tenant())
    dataset = upload(client, EXAMPLES.read_bytes(), name="weather_calls.jsonl",
                     kind=ingest_pb2.DATASET_KIND_TOOL_CALLS).dataset  # fmt: skip
    assert dataset.valid, dataset.report.violations
    student = str(build_llama(tmp_path / "tiny-llama"))
    run = client.trainer.CreateRun(pb.CreateRunRequest(
        path=common_pb2.TRAINING_PATH_DISTILL_TOOLS, dataset_id=dataset.id, student_model=student, sft=SFT,
    ))  # fmt: skip
    events = watch(client, run.id, timeout=400)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
    assert pb.RUN_STATE_GENERATING not in states(events)
    assert done.metrics["eval_loss_after"] < done.metrics["eval_loss_before"]
    assert "sft_correct_rate" in done.metrics and "grpo_correct_rate" not in done.metrics


def test_distill_tools_requests_are_checked_naming_the_field(services, client_for, make_tenant):
    client = client_for(make_tenant())

    def tools_request(**fields) -> pb.CreateRunRequest:
        base = {"path": common_pb2.TRAINING_PATH_DISTILL_TOOLS, "student_model": "m", "teacher": "platform:t",
                "tool_ids": ["tl_x"], "seed_prompts": ["What's the weather?"]}  # fmt: skip
        return pb.CreateRunRequest(**{**base, **fields})

    cases = [
        (tools_request(teacher=""), "teacher"),
        (tools_request(tool_ids=[]), "tool_ids"),
        (tools_request(seed_prompts=[" "]), "seed_prompts"),
        (tools_request(dataset_id="ds_x"), "teacher"),
        (tools_request(eval_dataset_id="ds_x"), "eval_dataset_id"),
        (tools_request(grpo=pb.GrpoSettings(max_steps=3)), "mode"),
        (tools_request(mode=common_pb2.TRAINING_MODE_SFT_RL, grpo=pb.GrpoSettings(num_generations=1)),
         "grpo.num_generations"),
        (tools_request(augment_count=3), "augment_count"),
    ]  # fmt: skip
    for request, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            client.trainer.CreateRun(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, err.value.details())
        bad = error_details_pb2.BadRequest()
        assert rpc_status.from_call(err.value).details[0].Unpack(bad)
        assert bad.field_violations[0].field == field, (field, err.value.details())
    assert client.registry.GetQuota(registry_pb2.GetQuotaRequest()).reserved == 0
