"""Tool-calling trajectories through the real teacher service: tools imported through ingest,
prompts written by the teacher, multi-turn trajectories verified call by call, the verified
ones a tool-calls dataset in ingest. The teacher is the OpenAI-protocol fake ("platform")
answering like a teacher that knows the weather tool, and sometimes gets it wrong.
"""

from __future__ import annotations

import json
import re
import signal
import time

import orjson
import psycopg
import pytest
from provider_servers import Answer, Call
from rpc_refusals import assert_refused
from test_distill_text import read_object, wait_final
from test_teacher_resume import free_port, start_teacher

from distillery.client import Client
from distillery.ingest.v1 import ingest_pb2
from distillery.teacher.v1 import teacher_pb2 as pb

TEACHER = "platform:tool-teacher"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "units": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature units"},
            },
            "required": ["city"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
SEEDS = ["What's the weather in Paris?", "Is it raining in Tokyo?"]
CITIES = ("Paris", "Tokyo")
OBJECTIVE = "Answer in one short sentence."


def city_of(text: str) -> str:
    return next(c for c in CITIES if c in text)


def weather_teacher(call: Call) -> Answer:
    """A teacher that knows the weather tool: rewordings, requests no tool fits, calls, results, answers."""
    system, user = call.system_text, call.user_text
    if "Rewrite the user's request" in system:
        n = int(re.search(r"in (\d+) different ways", system).group(1))
        return Answer(text=json.dumps({"prompts": [f"{user} (way {i})" for i in range(n)]}))
    if "none of these tools can serve" in system:
        n = int(re.search(r"Write (\d+) requests", system).group(1))
        return Answer(text=json.dumps({"prompts": [f"Tell me a joke about {city_of(user)} ({i})" for i in range(n)]}))
    if system.startswith("You are the get_weather API"):
        return Answer(text=json.dumps({"city": json.loads(user)["city"], "temperature_c": 21, "sky": "clear"}))
    if system.startswith("You check training data"):
        return Answer(text=json.dumps({"verdict": "yes", "reason": "the call fits"}))
    messages = call.body["messages"]
    assert call.body["tools"] and OBJECTIVE in system  # every turn offers the tools, under the objectives
    if messages[-1]["role"] == "tool":
        return Answer(text=f"In {city_of(user)} it is {json.loads(messages[-1]['content'])['temperature_c']} degrees.")
    if "joke" in user:
        return Answer(text="Why did the cloud stay home? It was feeling under the weather.")
    return Answer(tool_calls=[("get_weather", {"city": city_of(user), "units": "celsius"})])


def import_tools(client, *tools) -> list[str]:
    imported = client.ingest.ImportTools(ingest_pb2.ImportToolsRequest(document=json.dumps(list(tools)).encode(),
                                                                       filename="tools.json"))  # fmt: skip
    assert not imported.violations, imported.violations
    return [t.id for t in imported.tools]


def trajectory_job(tool_ids: list[str], **parameters) -> pb.CreateGenerationJobRequest:
    responses = parameters.pop("tool_responses", [])
    extra = {k: parameters.pop(k) for k in ("max_failed_fraction", "run_id") if k in parameters}
    return pb.CreateGenerationJobRequest(
        kind=pb.JOB_KIND_TOOL_TRAJECTORIES, teacher=TEACHER, tool_ids=tool_ids, seed_prompts=SEEDS,
        objectives=[OBJECTIVE], parameters=pb.GenerationParameters(**parameters), tool_responses=responses, **extra,
    )  # fmt: skip


def output_rows(services, job: pb.GenerationJob) -> list[dict]:
    return [orjson.loads(line) for line in read_object(services, job.output_key).splitlines()]


def test_seed_prompts_become_verified_trajectories_in_a_tool_calls_dataset(
    services, client_for, make_tenant, providers
):
    teacher = providers["platform"]
    teacher.responder = weather_teacher
    teacher.script_for('{"city": "Paris", "units": "celsius"}', {"status": 500})  # one simulated result, retried
    client = client_for(make_tenant())
    weather, clock = import_tools(client, WEATHER, CLOCK)
    request = trajectory_job([weather, clock])

    # 2 seeds + 2 rewordings each = 6 tool prompts; 2 no-tool prompts make 20% of 8; 2 trajectories each.
    estimate = client.teacher.EstimateJob(request)
    assert estimate.rows == 16 and estimate.input_tokens > 0 and estimate.estimated_cost_usd == 0.0
    job = wait_final(client, client.teacher.CreateGenerationJob(request).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    assert (job.rows_total, job.rows_done, job.rows_failed, job.rows_rejected) == (16, 16, 0, 0)
    assert dict(job.rows_by_prompt) == {"seed": 4, "paraphrase": 8, "no_tool": 4}
    assert not job.rejected_by_reason and not job.rejections

    # Each prompt was written once: a rewording request and a no-tool request per seed.
    asked = [c for c in teacher.calls if c.status == 200]
    assert sum("Rewrite the user's request" in c.system_text for c in asked) == 2
    assert sum("none of these tools can serve" in c.system_text for c in asked) == 2
    # 12 tool trajectories x (call, simulated result, answer) + 4 no-tool answers + 4 prompt requests, + 1 retry.
    assert len(asked) == 12 * 3 + 4 + 4 and len(teacher.calls) == len(asked) + 1
    assert job.usage.requests == len(teacher.calls)
    assert job.usage.input_tokens == sum(c.input_words for c in asked) and job.usage.output_tokens > 0
    with psycopg.connect(services.postgres_url) as conn:
        (plan,) = conn.execute("SELECT plan FROM teacher.generation_jobs WHERE id = %s", (job.id,)).fetchone()
    assert [p["kind"] for p in plan["prompts"]] == ["seed", "paraphrase", "paraphrase", "no_tool"] * 2

    rows = output_rows(services, job)
    assert len(rows) == 16
    called = [r for r in rows if not r["no_tool"]]
    assert len(called) == 12 and {r["seed_prompt"] for r in rows} == set(SEEDS)
    for row in called:
        system, user, call, result, answer = row["messages"]
        assert OBJECTIVE in system["content"] and city_of(user["content"]) in row["seed_prompt"]
        (made,) = call["tool_calls"]
        assert made["function"] == {
            "name": "get_weather",
            "arguments": json.dumps({"city": city_of(user["content"]), "units": "celsius"}),
        }
        assert result == {"role": "tool", "tool_call_id": made["id"], "content": result["content"]}
        assert json.loads(result["content"])["temperature_c"] == 21 and "21 degrees" in answer["content"]
        assert [t["name"] for t in row["tools"]] == ["get_weather", "get_time"]
    for row in (r for r in rows if r["no_tool"]):
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["prompt_kind"] == "no_tool" and "joke" in row["messages"][1]["content"]

    dataset = client.ingest.GetDataset(ingest_pb2.GetDatasetRequest(id=job.output_dataset_id))
    assert dataset.kind == ingest_pb2.DATASET_KIND_TOOL_CALLS and dataset.valid and dataset.rows == 16
    canonical = [orjson.loads(line) for line in read_object(services, dataset.canonical_key).splitlines()]
    assert all(set(r) == {"messages", "tools"} for r in canonical)


def fallible_teacher(call: Call) -> Answer:
    """The weather teacher, wrong on some prompts: an unknown tool, bad arguments, a call where
    none fits; and a judge that finds the Tokyo seed's call does not serve it."""
    user, system = call.user_text, call.system_text
    if system.startswith("You check training data"):
        verdict = "no" if "Request:\nIs it raining in Tokyo?\n" in user else "yes"
        return Answer(text=json.dumps({"verdict": verdict, "reason": "checked"}))
    if "Rewrite" in system or "none of these" in system or system.startswith("You are the") or call.body is None:
        return weather_teacher(call)
    if call.body["messages"][-1]["role"] != "tool":
        if user.endswith("(way 0)"):
            return Answer(tool_calls=[("get_wether", {"city": city_of(user)})])
        if user.startswith("What's the weather in Paris? (way 1)"):
            return Answer(tool_calls=[("get_weather", {"city": 42, "unit": "kelvin"})])
        if user.startswith("Tell me a joke about Tokyo"):
            return Answer(tool_calls=[("get_weather", {"city": "Tokyo"})])
    return weather_teacher(call)


def test_wrong_calls_are_rejected_kept_and_counted_by_reason(services, client_for, make_tenant, providers):
    teacher = providers["platform"]
    teacher.responder = fallible_teacher
    teacher.script_for("Is it raining in Tokyo? (way 1)", {"status": 400, "message": "maximum context length is 8"})
    client = client_for(make_tenant())
    request = trajectory_job(import_tools(client, WEATHER), trajectories_per_prompt=1, semantic_check=True,
                             max_failed_fraction=0.2)  # fmt: skip
    job = wait_final(client, client.teacher.CreateGenerationJob(request).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error

    # 8 prompts: the Paris seed and its no-tool prompt pass; 5 are rejected; 1 the provider could not answer.
    assert (job.rows_total, job.rows_done, job.rows_rejected, job.rows_failed) == (8, 2, 5, 1)
    assert dict(job.rejected_by_reason) == {
        "unknown_tool": 2, "wrong_type": 1, "unknown_property": 1, "unexpected_tool_call": 1, "semantic_mismatch": 1,
    }  # fmt: skip
    assert [f.code for f in job.failures] == ["input_too_long"]
    reasons = {r.row: (r.prompt_name, r.code, r.message) for r in job.rejections}
    assert reasons == {
        1: ("paraphrase", "unknown_tool", "unknown_tool"),
        2: ("paraphrase", "wrong_type", "wrong_type:city; unknown_property:unit"),
        4: ("seed", "semantic_mismatch", "semantic_mismatch"),
        5: ("paraphrase", "unknown_tool", "unknown_tool"),
        7: ("no_tool", "unexpected_tool_call", "unexpected_tool_call"),
    }
    # A wrong call ends its trajectory: no result was simulated for it, no judge asked about it.
    simulated = [c for c in teacher.calls if c.system_text.startswith("You are the get_weather API")]
    judged = [c for c in teacher.calls if c.system_text.startswith("You check training data")]
    assert len(simulated) == len(judged) == 2  # the Paris and Tokyo seeds

    # Rejected trajectories are kept with their reasons, outside the dataset.
    with psycopg.connect(services.postgres_url) as conn:
        kept = conn.execute("SELECT row, reasons, output FROM teacher.generation_rows WHERE job_id = %s AND rejected"
                            " ORDER BY row", (job.id,)).fetchall()  # fmt: skip
    assert [(row, reasons) for row, reasons, _ in kept] == [
        (1, ["unknown_tool"]), (2, ["wrong_type:city", "unknown_property:unit"]), (4, ["semantic_mismatch"]),
        (5, ["unknown_tool"]), (7, ["unexpected_tool_call"]),
    ]  # fmt: skip
    unknown = kept[0][2]["messages"][-1]["tool_calls"][0]["function"]
    assert unknown == {"name": "get_wether", "arguments": '{"city": "Paris"}'}
    rows = output_rows(services, job)
    assert [(r["prompt_kind"], r["seed_prompt"]) for r in rows] == [("seed", SEEDS[0]), ("no_tool", SEEDS[0])]
    dataset = client.ingest.GetDataset(ingest_pb2.GetDatasetRequest(id=job.output_dataset_id))
    assert dataset.valid and dataset.rows == 2


def test_tool_responses_given_by_the_user_are_used_instead_of_simulated_ones(
    services, client_for, make_tenant, providers
):
    teacher = providers["platform"]
    teacher.responder = weather_teacher
    client = client_for(make_tenant())
    examples = [
        pb.ToolResponseExample(tool_name="get_weather", response='{"temperature_c": 12, "sky": "rain"}'),
        pb.ToolResponseExample(tool_name="get_weather", response='{"temperature_c": 30, "sky": "sun"}'),
    ]
    # No rewordings and no no-tool prompts (both set to 0): the seeds alone, 2 trajectories each.
    request = trajectory_job(import_tools(client, WEATHER), paraphrases=0, no_tool_share=0.0, tool_responses=examples)
    job = wait_final(client, client.teacher.CreateGenerationJob(request).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    assert (job.rows_total, job.rows_done) == (4, 4) and dict(job.rows_by_prompt) == {"seed": 4}
    assert len(teacher.calls) == 4 * 2  # a call and an answer each: nothing simulated, no prompts written
    assert not any(c.system_text.startswith("You are the") for c in teacher.calls)
    results = [r["messages"][3]["content"] for r in output_rows(services, job)]
    assert sorted(results) == sorted([e.response for e in examples] * 2)  # taken in turn
    assert client.ingest.GetDataset(ingest_pb2.GetDatasetRequest(id=job.output_dataset_id)).valid


def test_a_job_whose_trajectories_all_fail_verification_fails_saying_why(client_for, make_tenant, providers):
    teacher = providers["platform"]
    teacher.responder = lambda call: Answer(tool_calls=[("get_wether", {"city": "Paris"})])
    client = client_for(make_tenant())
    request = trajectory_job(import_tools(client, WEATHER), paraphrases=0, no_tool_share=0.0, trajectories_per_prompt=1)
    job = wait_final(client, client.teacher.CreateGenerationJob(request).id)
    assert job.state == pb.JOB_STATE_FAILED and (job.rows_done, job.rows_rejected, job.rows_failed) == (0, 2, 0)
    assert job.error == "no trajectory passed verification: 2 unknown_tool" and not job.output_dataset_id


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda r, ids: r.ClearField("tool_ids"), "tool_ids"),
        (lambda r, ids: r.tool_ids.append("tool_missing"), "tool_ids"),
        (lambda r, ids: r.ClearField("seed_prompts"), "seed_prompts"),
        (lambda r, ids: r.seed_prompts.append("  "), "seed_prompts[2]"),
        (lambda r, ids: setattr(r.parameters, "no_tool_share", 0.95), "parameters.no_tool_share"),
        (lambda r, ids: setattr(r.parameters, "max_turns", 99), "parameters.max_turns"),
        (lambda r, ids: r.tool_responses.add(tool_name="get_time", response="{}"), "tool_responses[0].tool_name"),
    ],
    ids=["no_tools", "unknown_tool", "no_seeds", "blank_seed", "no_tool_share", "max_turns", "response_tool"],
)
def test_bad_trajectory_requests_are_refused_naming_the_field(client_for, make_tenant, providers, change, field):
    client = client_for(make_tenant())
    ids = import_tools(client, WEATHER)
    request = trajectory_job(ids)
    change(request, ids)
    assert_refused(lambda: client.teacher.CreateGenerationJob(request), field)
    assert not providers["platform"].calls


def test_a_killed_teacher_resumes_without_writing_the_prompts_again_or_walking_a_stored_row(
    services, client_for, make_tenant, providers, tmp_path
):
    teacher = providers["platform"]
    teacher.responder = weather_teacher
    teacher.latency_s = 0.1  # long enough to stop the teacher in the middle
    tenant = make_tenant()
    tool_ids = import_tools(client_for(tenant), WEATHER)
    port, log = free_port(), tmp_path / "teacher.log"
    first = start_teacher(services, teacher, port, log)
    client = Client({**services.addresses, "teacher": f"127.0.0.1:{port}"}, tenant.api_key, timeout=20)
    try:
        job = client.teacher.CreateGenerationJob(trajectory_job(tool_ids))
        deadline = time.monotonic() + 60
        while len(before := stored_rows(services, job.id)) < 4:
            assert time.monotonic() < deadline and first.poll() is None, log.read_text()
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        before = stored_rows(services, job.id)
        asked_before = len(teacher.calls)
        second = start_teacher(services, teacher, port, log)
        try:
            final = wait_final(client, job.id, timeout=60)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(15)
    finally:
        teacher.latency_s = 0.0
        if first.poll() is None:
            first.kill()
        client.close()

    assert final.state == pb.JOB_STATE_SUCCEEDED, (final.error, log.read_text()[-3000:])
    assert (final.rows_total, final.rows_done) == (16, 16) and 4 <= len(before) < 16
    assert sum("Rewrite the user's request" in c.system_text for c in teacher.calls) == 2  # written once
    # A trajectory's requests carry its row as their seed: no row stored before the kill was walked again.
    walked_after = {c.body["seed"] for c in teacher.calls[asked_before:] if "seed" in (c.body or {})}
    assert walked_after and not walked_after & before
    assert len(output_rows(services, final)) == 16


def stored_rows(services, job_id: str) -> set[int]:
    with psycopg.connect(services.postgres_url) as conn:
        rows = conn.execute("SELECT row FROM teacher.generation_rows WHERE job_id = %s", (job_id,)).fetchall()
    return {r[0] for r in rows}
