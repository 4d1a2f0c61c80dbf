"""The CLI's optimization commands against the running stack (docs/optimization.md): `models optimize` sets a
profile and keeps the settings not given, `models profile` prints or deletes it, `models generate --profile`
applies one, and `models try` answers the same prompts without and with a profile side by side, with each
answer's length and latency and the means (and, where the model's run had a rubric, each answer's score on
its judge criteria through the teacher's JudgeAnswers).

The model is the tiny fully fine-tuned Llama of tests/trained_models.py, which answers "rouge": a profile that
stops at "ug" visibly cuts its answer to "ro".
"""

from __future__ import annotations

import json

import test_generate
from click.testing import CliRunner
from provider_servers import Answer
from test_tracing_and_cli import cli_env
from trained_models import FULL, QUESTION, trained_model

from distillery.cli import optimize
from distillery.cli.main import cli
from distillery.trainer.v1 import trainer_pb2

artifacts = test_generate.artifacts  # the fixture: tiny trained models, as test_generate makes them


def test_optimize_profile_and_try_through_the_cli(services, make_tenant, service_registry_for, artifacts, tmp_path):
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
