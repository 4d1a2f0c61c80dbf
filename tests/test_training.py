"""Fine-tuning text end to end, through the real services, a real Ray head and the real
recipe: upload -> CreateRun -> Ray job (Ray Train + trl SFT, LoRA) -> registered model
-> Generate. The student is a tiny Llama built from a config with a local tokenizer."""

from __future__ import annotations

import difflib
import json
import time
from collections import Counter
from functools import partial
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rpc_refusals import field_of, refused
from test_services import upload
from tiny_models import build_llama

from distillery.common.v1 import common_pb2
from distillery.registry.v1 import registry_pb2
from distillery.teacher.v1 import teacher_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.common.objects import ObjectStore

FINETUNE_TEXT = common_pb2.TRAINING_PATH_FINETUNE_TEXT
COLOURS = {"red": "rouge", "blue": "bleu", "green": "vert", "white": "blanc", "black": "noir", "grey": "gris"}
# A small, learnable task: the same mapping asked in many ways; eval rows come from the same task.
ROWS = b"".join(
    b'{"system_prompt": "Translate the colour to French.", "input": "%s, please (%d)", "output": "%s"}\n'
    % (english.encode(), i, french.encode())
    for i in range(8)
    for english, french in COLOURS.items()
)
FINAL = {pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED}
QUICK = pb.SftSettings(max_steps=24, learning_rate=5e-3, batch_size=4, checkpoint_every_steps=12, lora_r=8)
# Long enough for the tiny student to answer the eval prompts right (QUICK's 24 steps learn little more than
# the answers' form; 150 steps got 2 of 5 right, 300 steps 5 of 5).
# Evals and early stopping are on by default; this run trains all its steps (early_stopping_patience=-1).
LEARN = pb.SftSettings(
    max_steps=300, learning_rate=5e-3, batch_size=4, checkpoint_every_steps=150, lora_r=8, early_stopping_patience=-1
)
LONG = pb.SftSettings(max_steps=5000, learning_rate=1e-3, batch_size=2, checkpoint_every_steps=1000)


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_llama(tmp_path_factory.mktemp("student") / "tiny-llama"))


def run_request(dataset_id: str, student: str, sft: pb.SftSettings = QUICK, **extra) -> pb.CreateRunRequest:
    return pb.CreateRunRequest(path=FINETUNE_TEXT, dataset_id=dataset_id, student_model=student, sft=sft, **extra)


def watch(client, run_id: str, timeout: float = 240) -> list[pb.RunEvent]:
    """Every event of the run until it is final."""
    deadline = time.monotonic() + timeout
    events: list[pb.RunEvent] = []
    while time.monotonic() < deadline:
        after = events[-1].sequence if events else 0
        try:  # kept as they come: a stream cut by its deadline keeps what it delivered
            for event in client.trainer.WatchRun(pb.WatchRunRequest(id=run_id, after_sequence=after), timeout=30):
                events.append(event)
        except grpc.RpcError as err:
            if err.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                raise
        if client.trainer.GetRun(pb.GetRunRequest(id=run_id)).state in FINAL:
            return events
    raise AssertionError(f"run {run_id} not final after {timeout}s")


def wait_for(predicate, timeout: float = 120, every: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


# The states a run that trains goes through, in order.
EVERY_STATE = [
    pb.RUN_STATE_QUEUED, pb.RUN_STATE_VALIDATING, pb.RUN_STATE_TRAINING, pb.RUN_STATE_EVALUATING,
    pb.RUN_STATE_REGISTERING, pb.RUN_STATE_SUCCEEDED,
]  # fmt: skip


def states(events: list[pb.RunEvent]) -> list[int]:
    return [e.state_change.to_state for e in events if e.WhichOneof("payload") == "state_change"]


def training_step(client, run_id: str) -> int:
    run = client.trainer.GetRun(pb.GetRunRequest(id=run_id))
    return run.progress.step if run.state == pb.RUN_STATE_TRAINING else 0


def test_a_finetune_text_run_trains_registers_and_generates(services, client_for, make_tenant, student):
    client = client_for(make_tenant())
    dataset = upload(client, ROWS).dataset
    run = client.trainer.CreateRun(run_request(dataset.id, student, LEARN, model_name="colours"))
    assert run.state == pb.RUN_STATE_QUEUED and run.request.sft.lora_alpha == 32  # defaults filled in
    assert client.registry.GetQuota(registry_pb2.GetQuotaRequest()).reserved == 1

    events = watch(client, run.id)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
    assert states(events) == EVERY_STATE
    # Live progress and metrics came from the training job while it ran.
    progress = [e.progress for e in events if e.WhichOneof("payload") == "progress"]
    assert progress and progress[-1].step == progress[-1].total_steps == LEARN.max_steps
    assert [p.step for p in progress] == sorted(p.step for p in progress)
    losses = [e.metrics.values["loss"] for e in events if "loss" in e.metrics.values]
    assert losses and any("tokens_per_second" in e.metrics.values for e in events)
    # The model got better at the task on rows it never trained on.
    assert done.metrics["eval_loss_after"] < done.metrics["eval_loss_before"]
    assert done.metrics["eval_rows"] >= 1 and done.metrics["train_rows"] + done.metrics["eval_rows"] == 48

    model = client.registry.GetModel(registry_pb2.GetModelRequest(id=done.model_id))
    assert model.name == "colours" and model.run_id == run.id and model.base_model == student
    assert model.artifact_kind == registry_pb2.ARTIFACT_KIND_LORA_ADAPTER
    assert model.metrics["eval_loss_after"] == done.metrics["eval_loss_after"]
    assert done.model_id in {m.id for m in client.registry.ListModels(registry_pb2.ListModelsRequest()).models}
    quota = client.registry.GetQuota(registry_pb2.GetQuotaRequest())
    assert (quota.used, quota.reserved) == (1, 0)

    message = registry_pb2.ChatMessage(role="user", content="red, please (99)")
    reply = client.registry.Generate(
        registry_pb2.GenerateRequest(model_id=done.model_id, messages=[message], max_new_tokens=8)
    )
    assert reply.message.role == "assistant" and reply.message.content and reply.completion_tokens > 0
    assert_generate_answers_as_reported(services, client, model, done.metrics)

    logs = client.trainer.GetRunLogs(pb.GetRunLogsRequest(id=run.id, tail=50)).lines
    assert logs  # the Ray job's own output


def assert_generate_answers_as_reported(
    services, client, model: registry_pb2.Model, metrics, *, learnt: bool = True
) -> None:
    """What the run reports about its model's answers is what Generate answers: the run's own answers
    (eval_answers.json, uploaded with the model) are Generate's answers to the same prompts at the model's
    default budget (max_new_tokens=0), their scores are the reported final_* metrics, and (``learnt``) the
    model answers clearly better than the base student did (the reported base_* metrics)."""
    recorded = eval_answers(services, model.artifact_uri)
    asked = recorded["answers"]
    n = len(asked)
    assert n >= 4 and metrics["answer_eval_prompts"] == n, recorded
    budget = recorded["decoding"]["max_new_tokens"]
    assert model.training_config["decoding"]["max_new_tokens"] == budget == metrics["answer_max_new_tokens"]
    replies = []
    for row in asked:
        request = registry_pb2.GenerateRequest(
            model_id=model.id, messages=[registry_pb2.ChatMessage(**m) for m in row["messages"]], max_new_tokens=0
        )
        reply = client.registry.Generate(request)
        assert reply.finish_reason == "stop" or reply.completion_tokens == budget, reply  # the model's budget
        replies.append(reply.message.content)
    # (a) the same answers (a merged LoRA may round one differently)
    differ = [(row["answer"], reply) for row, reply in zip(asked, replies, strict=True) if row["answer"] != reply]
    assert len(differ) <= 1, differ
    # (b) the same scores, within one answer's difference
    exact, similarity = scores(replies, [row["reference"] for row in asked])
    assert abs(exact - metrics["final_answer_exact_rate"]) <= 1 / n + 1e-9, (exact, metrics)
    assert abs(similarity - metrics["final_answer_similarity"]) <= 1 / n + 1e-9, (similarity, metrics)
    # (c) better than the base student, by a margin that neither untrained weights (the base's scores) nor a model
    # that learnt only the answers' form (one answer to every prompt: right on the commonest reference's rows) reach
    references = [row["reference"] for row in asked]
    one_answer = max(Counter(references).values()) / n
    print(f"answers: {n} asked, {len(differ)} differ; exact {metrics['base_answer_exact_rate']:.2f} -> {exact:.2f} "
          f"(one answer for all: {one_answer:.2f}), similarity {metrics['base_answer_similarity']:.2f} -> "
          f"{similarity:.2f}: {list(zip(replies, references, strict=True))}")  # fmt: skip
    if not learnt:
        return
    assert exact > max(metrics["base_answer_exact_rate"], one_answer), (exact, one_answer, metrics, replies)
    assert similarity >= metrics["base_answer_similarity"] + 0.5, (similarity, metrics, replies)


def eval_answers(services, artifact_uri: str) -> dict:
    """The run's eval_answers.json, next to its model's artifacts (``s3://<bucket>/<prefix>/``)."""
    bucket, _, prefix = artifact_uri.removeprefix("s3://").partition("/")
    assert bucket == services.s3.bucket
    return json.loads(ObjectStore(services.s3).get_bytes(f"{prefix.rstrip('/')}/eval_answers.json"))


def scores(answers: list[str], references: list[str]) -> tuple[float, float]:
    """Exact-match rate (after strip and casefold) and mean character similarity, as the recipe defines them."""
    pairs = [(a.strip().casefold(), r.strip().casefold()) for a, r in zip(answers, references, strict=True)]
    exact = sum(a == r for a, r in pairs) / len(pairs)
    return exact, sum(difflib.SequenceMatcher(None, a, r).ratio() for a, r in pairs) / len(pairs)


# Eval rows asking the same task with the answers of another mapping: as the student learns the train
# mapping, their loss first falls (French colour words, the answers' form), then rises (confidently other words).
WRONG = dict(zip(COLOURS, list(COLOURS.values())[1:] + list(COLOURS.values())[:1], strict=True))
WRONG_EVAL_ROWS = b"".join(
    b'{"system_prompt": "Translate the colour to French.", "input": "%s, please (%d)", "output": "%s"}\n'
    % (english.encode(), 100 + i, french.encode())
    for i in range(2)
    for english, french in WRONG.items()
)


def test_evals_stop_a_run_early_and_the_best_checkpoint_is_registered(services, client_for, make_tenant, student):
    """Evals every 4 steps on an eval set whose loss falls, then rises: training stops after 2 evals without a
    lower loss, long before max_steps, and the model registered is the best checkpoint's (its eval loss is the
    lowest of the evals), not the last weights'."""
    client = client_for(make_tenant())
    train = upload(client, ROWS).dataset
    held_out = upload(client, WRONG_EVAL_ROWS, name="eval.jsonl").dataset
    sft = pb.SftSettings(
        max_steps=200, learning_rate=5e-3, batch_size=4, lora_r=8, eval_every_steps=4, early_stopping_patience=2
    )
    run = client.trainer.CreateRun(run_request(train.id, student, sft, eval_dataset_id=held_out.id))
    events = watch(client, run.id)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error

    losses = {e.step: e.values["eval_loss"] for e in done.evals}
    assert len(losses) >= 3 and sorted(losses) == [e.step for e in done.evals], losses
    assert done.stop_reason == "early_stop" and done.stop_step < sft.max_steps, (done.stop_reason, done.stop_step)
    best = min(losses, key=losses.__getitem__)
    assert done.best_step == best < done.stop_step == max(losses), (done.best_step, losses)
    assert all(losses[step] >= losses[best] for step in losses if step > best)  # none better after the best
    assert losses[max(losses)] > losses[best]  # the last weights were worse: keeping them would have been wrong
    # The registered model is the best checkpoint's: its eval loss is the best eval's, not the last one's.
    assert done.metrics["eval_loss_after"] == pytest.approx(losses[best], rel=1e-4)
    model = client.registry.GetModel(registry_pb2.GetModelRequest(id=done.model_id))
    assert model.metrics["eval_loss_after"] == pytest.approx(losses[best], rel=1e-4)
    # Every eval was a metric event while the run went on.
    pushed = {e.metrics.step for e in events if "eval_loss" in e.metrics.values}
    assert set(losses) <= pushed


def test_a_registered_model_trains_further(services, client_for, make_tenant, student):
    """``--student mdl_...``: the run starts from the registered model (its eval loss before training is where
    the first run ended), trains it further (eval loss falls again), and registers a model over the same base
    that Generate serves. Another tenant's model id, or one that does not exist, is refused naming the field."""
    client = client_for(make_tenant())
    dataset = upload(client, ROWS).dataset
    first = client.trainer.CreateRun(run_request(dataset.id, student, QUICK, model_name="colours"))
    watch(client, first.id)
    first = client.trainer.GetRun(pb.GetRunRequest(id=first.id))
    assert first.state == pb.RUN_STATE_SUCCEEDED, first.error
    grown = client.registry.GetModel(registry_pb2.GetModelRequest(id=first.model_id))

    stranger = client_for(make_tenant())
    theirs = upload(stranger, ROWS).dataset
    for model_id in (grown.id, f"model:{grown.id}", "mdl_0000000000"):
        err = refused(lambda m=model_id: stranger.trainer.CreateRun(run_request(theirs.id, m, QUICK)))
        assert field_of(err) == "student_model" and "no model with this id" in err.details(), err.details()

    second = client.trainer.CreateRun(run_request(dataset.id, f"model:{grown.id}", QUICK, model_name="colours"))
    assert second.student_model == grown.id
    watch(client, second.id)
    second = client.trainer.GetRun(pb.GetRunRequest(id=second.id))
    assert second.state == pb.RUN_STATE_SUCCEEDED, second.error
    before, after = second.metrics["eval_loss_before"], second.metrics["eval_loss_after"]
    # It started where the first run ended (the same eval split), far below the untrained base, and went on.
    assert before == pytest.approx(first.metrics["eval_loss_after"], rel=1e-3, abs=1e-3)
    assert before < first.metrics["eval_loss_before"] and after < before
    model = client.registry.GetModel(registry_pb2.GetModelRequest(id=second.model_id))
    assert model.base_model == student and model.artifact_kind == registry_pb2.ARTIFACT_KIND_LORA_ADAPTER
    assert (model.name, model.version) == ("colours", grown.version + 1)
    assert grown.artifact_uri.endswith(model.training_config["continued_from"] + "/")
    message = registry_pb2.ChatMessage(role="user", content="red, please (99)")
    reply = client.registry.Generate(
        registry_pb2.GenerateRequest(model_id=model.id, messages=[message], max_new_tokens=8)
    )
    assert reply.message.content and reply.completion_tokens > 0


def test_a_full_allowance_refuses_a_run_and_cancel_frees_the_slot(services, client_for, make_tenant, student):
    from ray.job_submission import JobSubmissionClient

    client = client_for(make_tenant(allowance=1))
    dataset = upload(client, ROWS).dataset
    first = client.trainer.CreateRun(run_request(dataset.id, student, LONG))
    with pytest.raises(grpc.RpcError) as err:
        client.trainer.CreateRun(run_request(dataset.id, student, QUICK))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "allowance" in err.value.details()
    failure = error_details_pb2.QuotaFailure()
    assert rpc_status.from_call(err.value).details[0].Unpack(failure) and failure.violations

    wait_for(lambda: training_step(client, first.id) >= 2)  # the job is really training
    cancelled = client.trainer.CancelRun(pb.CancelRunRequest(id=first.id))
    assert cancelled.state == pb.RUN_STATE_CANCELLED
    ray = JobSubmissionClient(services.ray.dashboard, headers={"Authorization": f"Bearer {token(services)}"})
    job = f"{first.id}-1"
    stopped = wait_for(lambda: str(ray.get_job_status(job)) in ("JobStatus.STOPPED", "STOPPED"), timeout=20)
    assert stopped
    quota = client.registry.GetQuota(registry_pb2.GetQuotaRequest())
    assert (quota.used, quota.reserved, quota.available) == (0, 0, 1)
    with pytest.raises(grpc.RpcError) as again:
        client.trainer.CancelRun(pb.CancelRunRequest(id=first.id))
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The freed slot takes the next run.
    second = client.trainer.CreateRun(run_request(dataset.id, student, QUICK))
    client.trainer.CancelRun(pb.CancelRunRequest(id=second.id))


def token(services) -> str:
    return Path(services.ray.token_file).read_text().strip()


def test_an_invalid_dataset_ends_failed_with_its_violation(services, client_for, make_tenant, student):
    client = client_for(make_tenant())
    bad = ROWS + b'{"system_prompt": "Translate the colour to French.", "input": "pink"}\n'
    dataset = upload(client, bad).dataset
    assert not dataset.valid
    run = client.trainer.CreateRun(run_request(dataset.id, student))
    watch(client, run.id, timeout=30)
    failed = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert failed.state == pb.RUN_STATE_FAILED
    assert (failed.error.code, failed.error.field) == ("invalid_dataset", "dataset_id")
    violation = failed.error.violations[0]
    assert (violation.line, violation.field, violation.code) == (49, "output", "missing_field")
    assert "line 49" in failed.error.message
    assert client.registry.GetQuota(registry_pb2.GetQuotaRequest()).reserved == 0


def test_an_unknown_student_model_ends_failed_saying_so(services, client_for, make_tenant):
    client = client_for(make_tenant())
    dataset = upload(client, ROWS).dataset
    run = client.trainer.CreateRun(run_request(dataset.id, "no-such-org/no-such-model-3f9a"))
    watch(client, run.id)
    failed = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert failed.state == pb.RUN_STATE_FAILED
    assert (failed.error.code, failed.error.field) == ("unknown_model", "student_model")
    assert "no-such-org/no-such-model-3f9a" in failed.error.message
    assert client.registry.GetQuota(registry_pb2.GetQuotaRequest()).reserved == 0


def test_a_trainer_restart_mid_training_still_ends_the_run(services, client_for, make_tenant, student):
    tenant = make_tenant()
    client = client_for(tenant)
    dataset = upload(client, ROWS).dataset
    # Full fine-tuning here (LoRA is the default, tested above): the restart must not care.
    sft = pb.SftSettings(max_steps=120, learning_rate=1e-3, batch_size=2, checkpoint_every_steps=40, full_finetune=True)
    run = client.trainer.CreateRun(run_request(dataset.id, student, sft))
    wait_for(lambda: training_step(client, run.id) >= 1, timeout=300)  # a busy machine is slow to start a job

    services.loop.run(services.restart_trainer())

    restarted = client_for(tenant)  # the new instance listens on a new port
    watch(restarted, run.id)
    done = restarted.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
    assert done.metrics["eval_loss_after"] < done.metrics["eval_loss_before"]
    model = restarted.registry.GetModel(registry_pb2.GetModelRequest(id=done.model_id))
    assert model.artifact_kind == registry_pb2.ARTIFACT_KIND_FULL_WEIGHTS
    message = registry_pb2.ChatMessage(role="user", content="blue, please (99)")
    reply = restarted.registry.Generate(registry_pb2.GenerateRequest(model_id=done.model_id, messages=[message]))
    assert reply.message.content
    # Full weights answer through Generate as the run reported (this short run need not have learnt the answers).
    assert_generate_answers_as_reported(services, restarted, model, done.metrics, learnt=False)


def test_create_run_refuses_bad_requests_naming_the_field(services, client_for, make_tenant):
    client = client_for(make_tenant())
    distill, asr, ocr = (
        common_pb2.TRAINING_PATH_DISTILL_TEXT,
        common_pb2.TRAINING_PATH_FINETUNE_ASR,
        common_pb2.TRAINING_PATH_FINETUNE_OCR,
    )
    teacher = "openai:gpt-4.1-mini"  # the system prompts are the teacher's check: it needs one

    def named(name: str) -> teacher_pb2.NamedSystemPrompt:
        return teacher_pb2.NamedSystemPrompt(name=name, text="Answer briefly.")

    cases = [
        (pb.CreateRunRequest(dataset_id="ds_x", student_model="org/m"), grpc.StatusCode.INVALID_ARGUMENT, "path"),
        (run_request("", "org/m"), grpc.StatusCode.INVALID_ARGUMENT, "dataset_id"),
        (run_request("ds_x", " "), grpc.StatusCode.INVALID_ARGUMENT, "student_model"),
        (run_request("ds_x", "org/m", mode=common_pb2.TRAINING_MODE_SFT_RL), grpc.StatusCode.INVALID_ARGUMENT, "mode"),
        (run_request("ds_x", "org/m", pb.SftSettings(learning_rate=3.0)), grpc.StatusCode.INVALID_ARGUMENT,
         "sft.learning_rate"),
        (run_request("ds_x", "org/m", eval_fraction=1.5), grpc.StatusCode.INVALID_ARGUMENT, "eval_fraction"),
        # OCR runs: not the original DeepSeek-OCR (remote code), no teacher; their options on their path only.
        (pb.CreateRunRequest(path=ocr, dataset_id="ds_x", student_model="deepseek-ai/DeepSeek-OCR"),
         grpc.StatusCode.INVALID_ARGUMENT, "student_model"),
        (pb.CreateRunRequest(path=ocr, dataset_id="ds_x", teacher=teacher), grpc.StatusCode.INVALID_ARGUMENT,
         "teacher"),
        (run_request("ds_x", "org/m", train_vision=True), grpc.StatusCode.INVALID_ARGUMENT, "train_vision"),
        (pb.CreateRunRequest(path=asr, dataset_id="ds_x", image_mode="large"), grpc.StatusCode.INVALID_ARGUMENT,
         "image_mode"),
        (pb.CreateRunRequest(path=ocr), grpc.StatusCode.INVALID_ARGUMENT, "dataset_id"),
        # Speech runs: a language Whisper knows, only on finetune-asr; no teacher, no RL, an asr dataset.
        (pb.CreateRunRequest(path=asr, dataset_id="ds_x", language="klingon"), grpc.StatusCode.INVALID_ARGUMENT,
         "language"),
        (run_request("ds_x", "org/m", language="en"), grpc.StatusCode.INVALID_ARGUMENT, "language"),
        (pb.CreateRunRequest(path=asr, dataset_id="ds_x", teacher=teacher), grpc.StatusCode.INVALID_ARGUMENT,
         "teacher"),
        (pb.CreateRunRequest(path=asr, dataset_id="ds_x", mode=common_pb2.TRAINING_MODE_SFT_RL),
         grpc.StatusCode.INVALID_ARGUMENT, "mode"),
        (pb.CreateRunRequest(path=asr), grpc.StatusCode.INVALID_ARGUMENT, "dataset_id"),
        # Distill-text with no named system prompt is refused before it starts, saying so (the teacher's check).
        (pb.CreateRunRequest(path=distill, dataset_id="ds_x", student_model="org/m", teacher=teacher),
         grpc.StatusCode.INVALID_ARGUMENT, "system_prompts"),
        (pb.CreateRunRequest(path=distill, dataset_id="ds_x", student_model="org/m", teacher=teacher,
                             system_prompts=[named("a")] * 2), grpc.StatusCode.INVALID_ARGUMENT,
         "system_prompts[1].name"),
    ]  # fmt: skip
    for request, code, field in cases:
        err = refused(partial(client.trainer.CreateRun, request), code)
        if field == "system_prompts":
            assert "needs at least one named system prompt" in err.details()
        if field:
            assert field_of(err) == field, err.details()
    assert client.registry.GetQuota(registry_pb2.GetQuotaRequest()).reserved == 0  # nothing held


def test_the_same_idempotency_key_creates_one_run(services, client_for, make_tenant):
    client = client_for(make_tenant())
    request = run_request("ds_missing", "org/m", idempotency_key="nightly-7")
    first, again = client.trainer.CreateRun(request), client.trainer.CreateRun(request)
    assert first.id == again.id
    watch(client, first.id, timeout=30)
    failed = client.trainer.GetRun(pb.GetRunRequest(id=first.id))
    assert (failed.state, failed.error.code) == (pb.RUN_STATE_FAILED, "dataset_not_found")
    assert client.registry.GetQuota(registry_pb2.GetQuotaRequest()).reserved == 0
