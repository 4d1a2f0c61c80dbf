"""The CLI's optimization commands against the running stack (docs/optimization.md): `models optimize` sets a
profile and keeps the settings not given, `models profile` prints or deletes it, `models generate --profile`
applies one, and `models try` answers the same prompts without and with a profile side by side, with each
answer's length and latency and the means (and, where the model's run had a rubric, each answer's score on
its judge criteria through the teacher's JudgeAnswers); `models try --eval-dataset` asks a split's eval rows
(through ingest's ReadDatasetRows) with their system prompt and shows each row's reference.

The model is the tiny fully fine-tuned Llama of tests/trained_models.py, which answers "rouge": a profile that
stops at "ug" visibly cuts its answer to "ro".
"""

from __future__ import annotations

import json

import test_generate
from click.testing import CliRunner
from provider_servers import Answer
from test_services import upload
from test_splits import pairs_file, split
from test_tracing_and_cli import cli_env
from trained_models import FULL, QUESTION, trained_model

from distillery.cli import optimize
from distillery.cli.main import cli
from distillery.cli.try_prompts import row_prompt
from distillery.trainer.v1 import trainer_pb2

artifacts = test_generate.artifacts  # the fixture: tiny trained models, as test_generate makes them


def test_optimize_profile_and_try_through_the_cli(
    services, make_tenant, client_for, service_registry_for, artifacts, tmp_path
):
    tenant = make_tenant()
    model = trained_model(services, service_registry_for(tenant), tenant.tenant_id, artifacts, FULL)
    env = cli_env(services, tenant.api_key)
    runner = CliRunner()

    def run(*words: str):
        done = runner.invoke(cli, list(words), env=env, terminal_width=160)
        assert done.exit_code == 0, done.output
        return done.output

    run("models", "optimize", model.id, "--profile", "short", "--stop", "ug", "--max-tokens", "24")
    run("models", "optimize", model.id, "--profile", "short", "--top-k", "3", "--temperature", "0")  # keeps the rest
    shown = json.loads(run("models", "profile", model.id, "--profile", "short", "--json"))
    assert shown["sampling"] == {"strategy": "greedy", "temperature": 0.0, "top_k": 3, "max_tokens": 24, "stop": ["ug"]}
    assert "top-k 3" in run("models", "profile", model.id)
    # (the end: the registry runs in this process, and loading the model writes progress to the output)
    said = run("models", "generate", model.id, QUESTION, "--profile", "short")
    assert said.rstrip().endswith("ro") and "rouge" not in said, said
    assert run("models", "generate", model.id, QUESTION).rstrip().endswith("rouge")  # no default profile

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": QUESTION}) + "\n" + json.dumps({"input": "Say blue"}) + "\n")
    side_by_side = run("models", "try", model.id, "--prompts", str(prompts), "--profile", "short")
    assert "profile none" in side_by_side and "profile short" in side_by_side
    assert "rouge" in side_by_side and "tokens," in side_by_side and " ms)" in side_by_side
    assert "profile none: mean length" in side_by_side and "profile short: mean length" in side_by_side
    rows = json.loads(run("models", "try", model.id, "--prompts", str(prompts), "--profile", "short", "--json"))
    assert [r["prompt"] for r in rows] == [QUESTION, "Say blue"]
    assert (rows[0]["none"]["answer"].strip(), rows[0]["short"]["answer"].strip()) == ("rouge", "ro")
    assert rows[0]["short"]["tokens"] < rows[0]["none"]["tokens"] and rows[0]["none"]["latency_ms"] > 0

    # The eval side of a dataset's split as the prompts: asked with the row's system prompt, shown with its answer.
    client = client_for(tenant)
    train = upload(client, pairs_file([("Say red", "rouge"), ("Say green", "vert")])).dataset
    held = upload(client, pairs_file([(QUESTION, "bleu")]), name="eval.jsonl").dataset
    split(client, dataset_id=train.id, eval_dataset_id=held.id)
    rows = json.loads(run("models", "try", model.id, "--eval-dataset", train.id, "--profile", "short", "--json"))
    assert [(r["prompt"], r["system"], r["reference"]) for r in rows] == [(QUESTION, "Be brief.", "bleu")]
    assert rows[0]["none"]["tokens"] > 0 and rows[0]["short"]["latency_ms"] > 0
    shown = run("models", "try", model.id, "--eval-dataset", train.id, "--all-rows", "--limit", "1")
    assert "1. Say red" in shown and "reference: rouge" in shown and "Say green" not in shown
    for words in (
        ["--prompts", str(prompts), "--eval-dataset", train.id],
        [],
        ["--prompts", str(prompts), "--all-rows"],
    ):
        refused = runner.invoke(cli, ["models", "try", model.id, *words], env=env)
        assert refused.exit_code == 2 and ("--eval-dataset" in refused.output), refused.output

    run("models", "profile", model.id, "--profile", "short", "--delete")
    assert "has no profile" in run("models", "profile", model.id)
    refused = runner.invoke(cli, ["models", "generate", model.id, QUESTION, "--profile", "short"], env=env)
    assert refused.exit_code == 1 and "no profile 'short'" in refused.output


RUBRIC = """
name: french-colours
criteria:
  - name: exact
    kind: exact_match
  - name: right_word
    kind: judge
    weight: 2
    params: {judge: "platform:judge-model", scale: {min: 1, max: 5}, instructions: "The answer is the French word."}
"""


def test_try_scores_each_answer_on_the_rubrics_judge_criteria(services, make_tenant, client_for, providers):
    """`models try`'s rubric scores: the rubric as stored (its judge prompt recorded), each answer judged through
    the teacher's JudgeAnswers (a fake judge at the wire), on 0-1; criteria needing a reference are left out."""
    client = client_for(make_tenant())
    client.trainer.CreateRubric(trainer_pb2.CreateRubricRequest(text=RUBRIC))
    rubric = client.trainer.GetRubric(trainer_pb2.GetRubricRequest(rubric="french-colours"))
    replies = {"rouge": '{"score": 5}', "red": '{"score": 2}', "bleu": "no idea"}
    providers["platform"].responder = lambda c: Answer(text=next(v for k, v in replies.items() if k in c.user_text))
    scores = optimize.judged(client, rubric, ["blue?", "red?", "blue?"], ["rouge", "red", "bleu"])
    assert scores == [1.0, 0.25, 0.0]  # (score - 1) / 4; a reply with no score counts 0


def test_a_dataset_row_is_asked_as_the_model_was_trained():
    """A pairs row: every turn before its answer, system prompt included; the answer is the reference. A tool-calls
    row: up to its first assistant turn, with the row's tools; an inputs row: its user turn, no reference."""
    pairs = row_prompt(json.dumps({"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye now"},
    ]}))  # fmt: skip
    assert [(m.role, m.content) for m in pairs.messages] == [
        ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"),
    ]  # fmt: skip
    assert (pairs.text, pairs.reference, pairs.system, pairs.tools_json) == ("Bye", "Bye now", "Be brief.", [])

    tool = {"name": "weather", "description": "The weather", "parameters": {"type": "object", "properties": {}}}
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    calls = row_prompt(json.dumps({"tools": [tool], "messages": [
        {"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "name": "weather", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ]}))  # fmt: skip
    assert [(m.role, m.content) for m in calls.messages] == [("user", "Weather in Paris?")]
    assert calls.reference == 'weather({"city": "Paris"})' and json.loads(calls.tools_json[0]) == tool

    alone = row_prompt(json.dumps({"messages": [{"role": "user", "content": "Hello"}]}))
    assert (alone.text, alone.reference, alone.system, len(alone.messages)) == ("Hello", "", "", 1)
