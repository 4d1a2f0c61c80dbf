"""Distillation - Tool Calling end to end through the real services, a real Ray head and the
real recipe: tools imported -> the teacher writes verified trajectories (GENERATING) ->
split -> SFT -> reward dry run -> GRPO -> evaluation of the base, SFT and GRPO students ->
registered model -> Generate with tools. The student is a tiny Qwen2 with a tool template,
built from a config (a full fine-tune: GRPO needs a student that has learnt the format but
still varies); the teacher a local OpenAI-protocol server answering like a teacher that
knows the weather tool. An OpenAI-format tool-calls dataset trains as it is (SFT only,
LoRA on a tiny Llama without a tool template: the fallback format)."""

from __future__ import annotations

import itertools
import json
from functools import partial
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner
from minio import Minio
from provider_servers import Answer
from provider_servers import Call as TeacherCall
from rpc_refusals import assert_refused
from test_services import upload
from test_tool_trajectories import WEATHER, import_tools
from test_tracing_and_cli import cli_env
from test_training import states, watch
from tiny_models import build_llama, build_qwen2

from distillery.cli.main import cli
from distillery.common.v1 import common_pb2
from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.common import tool_format
from services.common.tool_calls import Call, Parsed
from services.trainer.recipes import tool_calling, tool_rewards

FINAL_STATES = (pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED)
CITIES = ("Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Quito")
SEEDS = [f"What's the weather in {city}?" for city in CITIES]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "tools" / "weather_calls.jsonl"
SFT = pb.SftSettings(max_steps=150, learning_rate=5e-3, batch_size=4, lora_r=8, checkpoint_every_steps=150)
GRPO_SFT = pb.SftSettings(
    max_steps=200,
    learning_rate=5e-3,
    batch_size=4,
    full_finetune=True,
    checkpoint_every_steps=200,
    eval_every_steps=-1,  # mid-training evals of the tool path: tests/test_tool_recipe.py
)
GRPO = pb.GrpoSettings(max_steps=2, num_generations=4, max_completion_length=48, prompts_per_step=2)


def city_of(text: str) -> str:
    return next((c for c in CITIES if c in text), CITIES[0])


UNITS = itertools.cycle([{"units": "celsius"}, {"units": "fahrenheit"}, {}])


def weather_teacher(call: TeacherCall) -> Answer:
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
    tenant = make_tenant()
    client = client_for(tenant)
    (weather,) = import_tools(client, WEATHER)
    student = str(build_qwen2(tmp_path / "tiny-qwen2", tools=True))
    run = client.trainer.CreateRun(pb.CreateRunRequest(
        path=common_pb2.TRAINING_PATH_DISTILL_TOOLS, student_model=student, teacher="platform:tool-teacher",
        tool_ids=[weather], seed_prompts=SEEDS, objectives=["Be brief."], sft=GRPO_SFT, eval_fraction=0.2,
        model_name="weather-caller", mode=common_pb2.TRAINING_MODE_SFT_RL, grpo=GRPO,
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
    for stage in ("base", "sft", "grpo"):
        for rate in ("valid_call_rate", "right_tool_rate", "schema_valid_rate", "args_match_rate", "correct_rate"):
            assert 0.0 <= metrics[f"{stage}_{rate}"] <= 1.0, (stage, rate)
    # SFT taught the call format: held-out requests now get calls that parse, to the right tool, valid
    # against its schema (the tiny student does not learn to copy held-out cities, so args rarely match).
    assert metrics["sft_valid_call_rate"] > metrics["base_valid_call_rate"]
    assert metrics["sft_schema_valid_rate"] > metrics["base_schema_valid_rate"]
    # the dry run found completions to compare, and GRPO ran its steps after SFT, timed
    assert metrics["dry_run_groups_with_variance"] >= 1 and metrics["grpo_steps"] == GRPO.max_steps
    assert metrics["grpo_generation_s_per_step"] > 0 and metrics["grpo_training_s_per_step"] > 0

    model = client.registry.GetModel(registry_pb2.GetModelRequest(id=done.model_id))
    assert model.path == common_pb2.TRAINING_PATH_DISTILL_TOOLS and model.name == "weather-caller"
    assert model.metrics["grpo_correct_rate"] == metrics["grpo_correct_rate"]
    # `runs show` and `models show` print the rates as one table, a row per stage, and the change in points
    for command in (["runs", "show", run.id], ["models", "show", done.model_id]):
        shown = CliRunner().invoke(cli, command, env=cli_env(services, tenant.api_key))
        assert shown.exit_code == 0, shown.output
        rows = {line.split()[1]: line for line in shown.output.splitlines() if line.startswith("│ ")}
        assert {"base", "SFT", "GRPO"} <= set(rows), shown.output
        assert f"{100 * metrics['sft_valid_call_rate']:.0f}%" in rows["SFT"]
        sft_points = 100 * (metrics["sft_correct_rate"] - metrics["base_correct_rate"])
        assert f"SFT {100 * metrics['sft_correct_rate']:.0f}% ({sft_points:+.0f} points)" in shown.output
    # What the run reported is what its users get: its held-out requests asked through Generate, with the
    # model's own tools and decoding, score the rates the recipe reported for the final stage (GRPO).
    assert [json.loads(text)["name"] for text in model.tools_json] == ["get_weather"]
    rows = held_out_rows(services, tenant.tenant_id, run.id)
    assert len(rows) == metrics["eval_prompts"]
    got = rates_through_generate(client, done.model_id, rows)
    call_rows = sum(1 for row in rows if tool_format.prompt_and_expected(row["messages"])[1])
    for rate in tool_calling.RATES:
        one_request = 1 / (len(rows) if rate == "correct_rate" else call_rows if rate != "no_call_rate" else
                           max(len(rows) - call_rows, 1))  # fmt: skip
        assert abs(got[rate] - metrics[f"grpo_{rate}"]) <= one_request + 1e-9, (rate, got, dict(metrics))
    assert got["valid_call_rate"] > 0  # the registered weights are the trained ones: the base made no valid call
    assert metrics["base_valid_call_rate"] == 0


def held_out_rows(services, tenant_id: str, run_id: str) -> list[dict[str, Any]]:
    """The run's eval split, as its recipe read it (the spec names it)."""
    s3 = Minio(services.s3.endpoint, services.s3.access_key, services.s3.secret_key, secure=False)
    spec = json.loads(s3.get_object(services.s3.bucket, f"tenants/{tenant_id}/runs/{run_id}/spec.json").read())
    text = s3.get_object(services.s3.bucket, spec["eval_key"]).read().decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def rates_through_generate(client, model_id: str, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each row's prompt asked through Generate (the model's tools and default decoding), scored as the recipe
    scores its evaluation."""
    answers, expected, tools = [], [], []
    for row in rows:
        prompt, wanted = tool_format.prompt_and_expected(row["messages"])
        reply = client.registry.Generate(registry_pb2.GenerateRequest(
            model_id=model_id, model_tools=True,
            messages=[registry_pb2.ChatMessage(role=m["role"], content=m.get("content") or "") for m in prompt],
        ), timeout=120)  # fmt: skip
        calls = [Call(c.name, json.loads(c.arguments_json)) for c in reply.message.tool_calls]
        error = reply.invalid_tool_calls[0].error if reply.invalid_tool_calls else ""
        assert reply.finish_reason == "tool_calls" if calls else reply.finish_reason in ("stop", "length")
        answers.append(Parsed(calls=calls, text=reply.message.content, error=error))
        expected.append(wanted)
        tools.append(row["tools"])
    return tool_rewards.score_parsed(answers, expected, tools)


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
        base = {"path": common_pb2.TRAINING_PATH_DISTILL_TOOLS, "student_model": "org/m", "teacher": "platform:t",
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
        assert_refused(partial(client.trainer.CreateRun, request), field)
    assert client.registry.GetQuota(registry_pb2.GetQuotaRequest()).reserved == 0


def grpo_flags() -> dict[str, click.Option]:
    """Every `--grpo-*` option of `runs create`, by parameter name: a new one is covered without a change here."""
    command = cli.commands["runs"].commands["create"]
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name and p.name.startswith("grpo_")}


def test_the_cli_sends_every_grpo_setting(services, make_tenant, client_for):
    """`runs create --mode sft-rl --grpo-*`: every flag's value arrives in the stored run's GRPO settings; a bad
    value reaches the trainer, which checks it and names it."""
    tenant = make_tenant()
    base = ["runs", "create", "--path", "distill-tools", "--student", "org/m", "--teacher", "platform:t",
            "--tool", "tl_x", "--seed-prompt", "What's the weather?", "--mode", "sft-rl"]  # fmt: skip
    options = grpo_flags()
    assert len(options) >= 7, sorted(options)
    # A value of its own for each flag, valid for every setting and none of them a default (4, 128, 0, 30, 1.0, 2):
    # odd whole numbers from 3, and fractions exact in binary below 1.
    ints, floats = itertools.count(3, 2), (n / 16 for n in itertools.count(1, 2))
    sent: dict[str, int | float] = {}
    for name, option in sorted(options.items()):
        assert isinstance(option.type, click.types.IntParamType | click.types.FloatParamType), (name, option.type)
        sent[name] = next(ints) if isinstance(option.type, click.types.IntParamType) else next(floats)
    args = [arg for name, value in sent.items() for arg in (options[name].opts[0], str(value))]
    result = CliRunner().invoke(cli, [*base, *args, "--json"], env=cli_env(services, tenant.api_key))
    assert result.exit_code == 0, result.output
    client = client_for(tenant)
    run_id = json.loads(result.output)["id"]
    try:
        stored = client.trainer.GetRun(pb.GetRunRequest(id=run_id)).request.grpo
    finally:
        if client.trainer.GetRun(pb.GetRunRequest(id=run_id)).state not in FINAL_STATES:
            client.trainer.CancelRun(pb.CancelRunRequest(id=run_id))
    settings = {f.name: getattr(stored, f.name) for f in pb.GrpoSettings.DESCRIPTOR.fields}
    arrived = {}
    for name, value in sent.items():
        [field] = [f for f, v in settings.items() if v == value] or [None]
        assert field is not None, f"--{name.replace('_', '-')} {value} is not in the stored GRPO settings {settings}"
        # The flag names its setting: each word of the flag is in the setting's name (steps -> max_steps).
        assert set(name.removeprefix("grpo_").split("_")) <= set(field.split("_")), (name, field)
        arrived[name] = field
    assert len(set(arrived.values())) == len(sent)  # each flag its own setting
    assert set(arrived.values()) == set(settings), "a GRPO setting has no --grpo-* flag"

    for flags, field in [
        (["--grpo-temperature", "2.5"], "grpo.temperature"),
        (["--grpo-prompts-per-step", "-1"], "grpo.prompts_per_step"),
        (["--grpo-generations", "1"], "grpo.num_generations"),
        (["--grpo-beta", "-1"], "grpo.beta"),
        (["--grpo-steps", "-2"], "grpo.max_steps"),
    ]:
        result = CliRunner().invoke(cli, base + flags, env=cli_env(services, tenant.api_key))
        assert result.exit_code == 1 and field in result.output, (flags, result.output)
    # --dataset is optional on the command line (distill-tools with a teacher needs none); the trainer asks for it
    result = CliRunner().invoke(cli, ["runs", "create", "--student", "org/m"], env=cli_env(services, tenant.api_key))
    assert result.exit_code == 1 and "dataset_id" in result.output, result.output
