"""Rubrics end to end over the real services: stored and versioned per tenant (CreateRubric, GetRubric,
ListRubrics), checked on a dataset (ValidateRubric), and checked before a run trains: a validate-only run
shows the scores of the eval references and of the base student's answers (a Ray job asks the student) with
no training, a broken rubric is refused naming the criterion, and a run with a rubric trains and shows its
validation. The judge is the fake OpenAI-protocol "platform" server, as in test_rubric.py."""

from __future__ import annotations

import json
import re
from functools import partial

import grpc
import pytest
from click.testing import CliRunner
from provider_servers import Answer
from rpc_refusals import assert_refused, field_of, refused
from test_services import upload
from test_tracing_and_cli import cli_env
from test_training import QUICK, ROWS, states, watch
from tiny_models import build_llama

from distillery.cli.main import cli
from distillery.common.v1 import common_pb2
from distillery.registry.v1 import registry_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.common.errors import InvalidArgument
from services.trainer.recipes import rubric_evals
from services.trainer.recipes.job_spec import JobSpec
from services.trainer.recipes.sft_settings import resolve_sft
from services.trainer.rubric import parse_rubric

FRENCH = {"rouge", "bleu", "vert", "blanc", "noir", "gris"}
ANSWER = re.compile(r"<answer>\n(.*)\n</answer>", re.DOTALL)
RUBRIC = """
name: colours
description: French colour names.
criteria:
  - name: exact
    kind: exact_match
  - name: french
    kind: judge
    weight: 2
    params: {judge: "platform:judge-model", scale: {min: 1, max: 5}, instructions: "The answer is a French colour."}
"""
# A numeric criterion on answers that hold no number: it cannot score a reference.
BROKEN = RUBRIC.replace("name: colours", "name: colours-broken").replace(
    "  - name: french", "  - name: count\n    kind: numeric\n  - name: french"
)


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_llama(tmp_path_factory.mktemp("student") / "tiny-llama"))


def french_judge(fake) -> None:
    """The fake judge: 5 for an answer that is a French colour, 1 for anything else."""
    fake.responder = lambda call: Answer(
        text=json.dumps({"reason": "checked", "score": 5 if ANSWER.search(call.user_text).group(1) in FRENCH else 1}),
        input_tokens=50, output_tokens=5,
    )  # fmt: skip


def cli_run(services, api_key: str, *args: str, exit_code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args), env=cli_env(services, api_key))
    assert result.exit_code == exit_code, result.output
    return result.output


def create(client, text: str, **extra) -> pb.Rubric:
    return client.trainer.CreateRubric(pb.CreateRubricRequest(text=text, **extra))


def test_rubrics_are_named_versioned_and_each_tenants_own(services, client_for, make_tenant):
    alice, bob = client_for(make_tenant()), client_for(make_tenant())
    first = create(alice, RUBRIC)
    assert (first.name, first.version, first.id[:4]) == ("colours", 1, "rub_")
    assert [(c.name, c.kind, c.weight) for c in first.criteria] == [("exact", "exact_match", 1.0),
                                                                     ("french", "judge", 2.0)]  # fmt: skip
    judge = first.criteria[1]
    assert judge.params["judge"] == "platform:judge-model" and judge.params["scale"]["max"] == 5
    assert judge.judge_prompt.version >= 1 and "Criterion: The answer is a French colour." in judge.judge_prompt.system
    assert "{answer}" in judge.judge_prompt.user_template and not first.criteria[0].HasField("judge_prompt")

    assert create(alice, RUBRIC).id == first.id  # the same file again: the same version
    second = create(alice, RUBRIC.replace("weight: 2", "weight: 3"))
    assert (second.name, second.version) == ("colours", 2) and second.id != first.id
    renamed = create(alice, json.dumps({"name": "x", "criteria": [{"name": "e", "kind": "exact_match"}]}),
                     format="json", name="other")  # fmt: skip
    assert (renamed.name, renamed.version) == ("other", 1)

    get = alice.trainer.GetRubric
    assert get(pb.GetRubricRequest(rubric="colours")).id == second.id  # a name: its latest version
    assert get(pb.GetRubricRequest(rubric=first.id)).criteria[1].weight == 2.0  # an id: that version
    listed = alice.trainer.ListRubrics(pb.ListRubricsRequest())
    assert [(r.name, r.version) for r in listed.rubrics] == [("other", 1), ("colours", 2), ("colours", 1)]
    page = alice.trainer.ListRubrics(pb.ListRubricsRequest(page=common_pb2.PageRequest(page_size=2)))
    assert len(page.rubrics) == 2 and page.page.next_page_token
    rest = alice.trainer.ListRubrics(
        pb.ListRubricsRequest(page=common_pb2.PageRequest(page_token=page.page.next_page_token))
    )
    assert [r.id for r in rest.rubrics] == [first.id]

    # Another tenant's rubric is not found, by id or by name, and not listed; its own name is its own.
    for ref in (first.id, "colours"):
        assert_refused(partial(bob.trainer.GetRubric, pb.GetRubricRequest(rubric=ref)), "rubric",
                       grpc.StatusCode.NOT_FOUND)  # fmt: skip
    assert not bob.trainer.ListRubrics(pb.ListRubricsRequest()).rubrics
    assert create(bob, RUBRIC).version == 1

    # A bad file is refused naming the criterion and its field.
    bad = RUBRIC.replace("kind: exact_match", "kind: regex\n    params: {pattern: '(unclosed'}")
    err = refused(partial(create, alice, bad))
    assert field_of(err) == "criteria[0].params.pattern" and "'exact'" in err.details()
    assert field_of(refused(partial(create, alice, RUBRIC, format="toml"))) == "format"
    assert field_of(refused(partial(create, alice, RUBRIC, format="json"))) == "text"


def test_validate_rubric_scores_references_and_given_answers(services, client_for, make_tenant, providers):
    french_judge(providers["platform"])
    client = client_for(make_tenant())
    dataset = upload(client, ROWS).dataset
    create(client, RUBRIC)
    answers = ["rouge", "red", "vert", "nope"]  # the first four rows ask red, blue, green, white: 2 right
    shown = client.trainer.ValidateRubric(pb.ValidateRubricRequest(rubric="colours", dataset_id=dataset.id,
                                                                   answers=answers))  # fmt: skip
    assert shown.ok and shown.rows == 4 and shown.base == "the answers given" and shown.rubric_version == 1
    exact, french = shown.criteria
    assert (exact.reference_mean, exact.base_mean, exact.failures, exact.problem) == (1.0, 0.5, 0, "")
    assert (french.reference_mean, french.base_mean) == (1.0, 0.5) and french.spread == 0.5
    assert shown.reference_total == 1.0 and shown.base_total == pytest.approx(0.5)
    assert shown.judge_usage.requests == 8 and shown.judge_usage.input_tokens == 400

    create(client, BROKEN)
    broken = client.trainer.ValidateRubric(pb.ValidateRubricRequest(rubric="colours-broken", dataset_id=dataset.id,
                                                                    answers=answers))  # fmt: skip
    assert not broken.ok and broken.criteria[1].name == "count" and broken.criteria[1].failures == 8
    assert "cannot score row 0 of the eval references" in broken.criteria[1].problem
    assert [c.problem for c in broken.criteria if c.name != "count"] == ["", ""]

    request = pb.ValidateRubricRequest(rubric="colours", dataset_id=dataset.id, answers=answers, max_rows=3)
    assert field_of(refused(partial(client.trainer.ValidateRubric, request))) == "max_rows"
    request = pb.ValidateRubricRequest(rubric="nope", dataset_id=dataset.id)
    assert field_of(refused(partial(client.trainer.ValidateRubric, request), grpc.StatusCode.NOT_FOUND)) == "rubric"


def run_request(dataset_id: str, student: str, sft: pb.SftSettings = QUICK, **extra) -> pb.CreateRunRequest:
    return pb.CreateRunRequest(path=common_pb2.TRAINING_PATH_FINETUNE_TEXT, dataset_id=dataset_id,
                               student_model=student, sft=sft, **extra)  # fmt: skip


def test_a_validate_only_run_shows_the_rubric_scores_before_any_training(
    services, client_for, make_tenant, providers, student
):
    platform = providers["platform"]
    french_judge(platform)
    tenant = make_tenant()
    client = client_for(tenant)
    dataset = upload(client, ROWS).dataset
    rubric = create(client, RUBRIC)
    run = client.trainer.CreateRun(run_request(dataset.id, student, rubric="colours", validate_only=True))
    assert run.request.rubric == rubric.id  # the version it was created with

    events = watch(client, run.id, timeout=180)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
    assert states(events) == [pb.RUN_STATE_QUEUED, pb.RUN_STATE_VALIDATING, pb.RUN_STATE_SUCCEEDED]
    assert not done.model_id and not done.metrics and not done.evals
    shown = done.rubric_validation
    assert shown.ok and shown.rubric_id == rubric.id and shown.base == f"the base student {student}"
    exact, french = shown.criteria
    # The references score full marks; the untrained tiny student's answers do not.
    assert exact.reference_mean == 1.0 and exact.base_mean < 1.0 and exact.failures == 0
    assert french.reference_mean == 1.0 and french.base_mean < 1.0 and french.spread > 0
    assert 1 <= shown.rows <= 16  # the first rows of the eval split (a tenth of 48)
    judged = [ANSWER.search(c.user_text).group(1) for c in platform.calls]
    assert len(judged) == 2 * shown.rows and shown.judge_usage.requests == 2 * shown.rows
    assert all("Criterion: The answer is a French colour." in c.system_text for c in platform.calls)
    assert any(e.log.text.startswith("rubric colours v1 checked on") for e in events)
    assert not any(e.log.text.startswith("submitted Ray job") for e in events)  # no training job
    quota = client.registry.GetQuota(registry_pb2.GetQuotaRequest())
    assert (quota.used, quota.reserved) == (0, 0)  # no model, and the slot given back
    shown_by_cli = cli_run(services, tenant.api_key, "runs", "show", run.id)
    assert "SUCCEEDED" in shown_by_cli and f"rubric colours v1 ({rubric.id}) on {shown.rows} rows: ok" in shown_by_cli
    assert "criterion" in shown_by_cli and f"judge: {2 * shown.rows} requests" in shown_by_cli


def test_a_broken_rubric_is_refused_naming_the_criterion(services, client_for, make_tenant, providers, student):
    client = client_for(make_tenant())
    dataset = upload(client, ROWS).dataset
    create(client, BROKEN)
    run = client.trainer.CreateRun(run_request(dataset.id, student, rubric="colours-broken"))
    watch(client, run.id, timeout=60)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_FAILED
    assert (done.error.code, done.error.field) == ("rubric_invalid", "rubric.criteria[1]")
    assert "'count' (numeric) cannot score row 0 of the eval references" in done.error.message
    assert providers["platform"].calls == []  # refused before any answer was asked for or judged
    assert client.registry.GetQuota(registry_pb2.GetQuotaRequest()).reserved == 0

    # Refused at once: a rubric the tenant has not got, validate_only without one, a rubric on distill-tools.
    cases = [
        (run_request(dataset.id, student, rubric="nope"), grpc.StatusCode.NOT_FOUND, "rubric"),
        (run_request(dataset.id, student, validate_only=True), grpc.StatusCode.INVALID_ARGUMENT, "validate_only"),
        (pb.CreateRunRequest(path=common_pb2.TRAINING_PATH_DISTILL_TOOLS, dataset_id=dataset.id, student_model=student,
                             rubric="colours-broken"), grpc.StatusCode.INVALID_ARGUMENT, "rubric"),
    ]  # fmt: skip
    for request, code, field in cases:
        assert field_of(refused(partial(client.trainer.CreateRun, request), code)) == field


def test_a_run_with_a_rubric_trains_and_shows_its_validation(services, client_for, make_tenant, providers, student):
    french_judge(providers["platform"])
    client = client_for(make_tenant())
    dataset = upload(client, ROWS).dataset
    create(client, RUBRIC)
    # A checkpoint at every eval, so that the best eval's weights are there to keep.
    sft = pb.SftSettings(max_steps=24, learning_rate=5e-3, batch_size=4, eval_every_steps=3, checkpoint_every_steps=3,
                         lora_r=8)  # fmt: skip
    run = client.trainer.CreateRun(run_request(dataset.id, student, rubric="colours", sft=sft))
    events = watch(client, run.id, timeout=240)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
    assert pb.RUN_STATE_TRAINING in states(events) and done.model_id
    assert done.rubric_validation.ok and done.rubric_validation.criteria[0].reference_mean == 1.0
    texts = [e.log.text for e in events if e.WhichOneof("payload") == "log"]
    checked = next(i for i, t in enumerate(texts) if t.startswith("rubric colours v1 checked on"))
    submitted = next(i for i, t in enumerate(texts) if t.startswith("submitted Ray job"))
    assert checked < submitted  # validated before the training job was submitted

    # The mid-training evals scored generated answers with the rubric's programmatic criterion (the judge's is
    # the teacher's, not the job's), and the checkpoint kept is the best by that score.
    during = [e for e in done.evals if e.step > 0]
    assert during and all({"eval_rubric_score", "eval_rubric_exact", "eval_loss"} <= set(e.values) for e in during)
    assert all(0.0 <= e.values["eval_rubric_score"] <= 1.0 for e in during)
    best = max(e.values["eval_rubric_score"] for e in during)
    assert done.best_step == next(e.step for e in during if e.values["eval_rubric_score"] == best)
    pushed = [e.metrics for e in events if "eval_rubric_score" in e.metrics.values]
    assert {m.step for m in pushed} >= {e.step for e in during}


def test_the_cli_creates_shows_and_validates_rubrics(services, client_for, make_tenant, providers, tmp_path):
    french_judge(providers["platform"])
    tenant = make_tenant()
    dataset = upload(client_for(tenant), ROWS).dataset
    (tmp_path / "colours.yaml").write_text(RUBRIC)
    assert "rubric colours v1 (rub_" in cli_run(
        services, tenant.api_key, "rubrics", "create", str(tmp_path / "colours.yaml")
    )
    assert "colours" in cli_run(services, tenant.api_key, "rubrics", "list")
    shown = cli_run(services, tenant.api_key, "rubrics", "show", "colours")
    assert "exact_match" in shown and "Criterion: The answer is a French colour." in shown and "<answer>" in shown
    (tmp_path / "answers.json").write_text(json.dumps(["rouge", "red"]))
    table = cli_run(services, tenant.api_key, "rubrics", "validate", "colours", "--dataset", dataset.id, "--answers",
                    str(tmp_path / "answers.json"))  # fmt: skip
    assert "on 2 rows: ok" in table and "judge: 4 requests" in table
    assert re.search(r"exact\s*│\s*exact_match\s*│\s*1\s*│\s*1\.00\s*│\s*0\.50\s*│\s*\+0\.50", table), table
    (tmp_path / "broken.yaml").write_text(BROKEN)
    cli_run(services, tenant.api_key, "rubrics", "create", str(tmp_path / "broken.yaml"))
    refused_table = cli_run(services, tenant.api_key, "rubrics", "validate", "colours-broken", "--dataset",
                            dataset.id, exit_code=1)  # fmt: skip
    assert "refused" in refused_table and "problem: count (numeric) cannot score row 0 of the eval" in refused_table


def test_mid_training_evals_score_generated_answers_with_the_programmatic_criteria():
    stored = parse_rubric(RUBRIC).to_dict()
    criteria = rubric_evals.for_job(stored)
    assert [c.name for c in criteria or []] == ["exact"]  # the judge's criterion is the teacher's, not the job's
    rows = [{"prompt": [{"role": "user", "content": f"{en}, please"}], "completion": [{"role": "assistant",
             "content": fr}]} for en, fr in (("red", "rouge"), ("blue", "bleu"))]  # fmt: skip
    got = rubric_evals.scores(criteria or [], rows, [{"answer": " Rouge "}, {"answer": "blue"}])
    assert got == {"eval_rubric_score": 0.5, "eval_rubric_exact": 0.5}
    judge_only = parse_rubric(RUBRIC.replace("  - name: exact\n    kind: exact_match\n", "")).to_dict()
    assert rubric_evals.for_job(judge_only) is None and rubric_evals.for_job(None) is None

    spec = JobSpec(run_id="run_1", tenant_id="t", student_model="m", train_key="a", eval_key="b", output_prefix="p",
                   sft=resolve_sft({}), rubric=stored)  # fmt: skip
    assert JobSpec.from_json(spec.to_json()).rubric == stored
    with pytest.raises(InvalidArgument) as err:
        JobSpec.from_dict({**json.loads(spec.to_json()), "rubric": {"name": "x"}})
    assert err.value.field == "spec.rubric"
