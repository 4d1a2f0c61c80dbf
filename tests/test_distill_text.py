"""Distillation - Text Generation end to end, and augmentation for finetune-text, through
the real services, a real Ray head and the real SFT recipe. The teacher is a local
server speaking the OpenAI protocol (the "platform" provider), driven by the real SDK.

    input-only dataset + named system prompts -> GENERATING (every input under every
    prompt, failed rows reported) -> split -> SFT of a tiny student -> registered model
"""

from __future__ import annotations

from functools import partial

import grpc
import orjson
import psycopg
import pytest
from minio import Minio
from provider_servers import Answer, Call
from rpc_refusals import assert_refused
from test_services import upload
from test_training import LEARN, QUICK, assert_generate_answers_as_reported, states, wait_for, watch
from tiny_models import build_llama

from distillery.common.v1 import common_pb2
from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2
from distillery.teacher.v1 import teacher_pb2
from distillery.trainer.v1 import trainer_pb2 as pb

DISTILL = common_pb2.TRAINING_PATH_DISTILL_TEXT
COLOURS = {"red": "rouge", "blue": "bleu", "green": "vert", "white": "blanc", "black": "noir"}
# 100 inputs: a colour asked in 20 ways each.
INPUTS = [f"{colour}, please ({i})" for i in range(20) for colour in COLOURS]
PROMPTS = [
    teacher_pb2.NamedSystemPrompt(name="french", text="Give the colour in French."),
    teacher_pb2.NamedSystemPrompt(name="shout", text="Give the colour in capitals."),
]


def inputs_file(texts: list[str]) -> bytes:
    return b"".join(orjson.dumps({"input": t}) + b"\n" for t in texts)


def colour_teacher(call: Call) -> Answer:
    """A teacher that knows the task: the colour in French, or shouted."""
    colour = call.user_text.split(",")[0]
    return Answer(text=COLOURS[colour] if "French" in call.system_text else colour.upper())


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_llama(tmp_path_factory.mktemp("student") / "tiny-llama"))


def distill_request(dataset_id: str, student: str, prompts=PROMPTS, **extra) -> pb.CreateRunRequest:
    extra.setdefault("teacher", "platform:colour-teacher")
    extra.setdefault("sft", QUICK)
    return pb.CreateRunRequest(
        path=DISTILL, dataset_id=dataset_id, student_model=student, system_prompts=prompts, **extra
    )


def read_object(services, key: str) -> bytes:
    s3 = services.s3
    client = Minio(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, secure=False, region=s3.region)
    response = client.get_object(s3.bucket, key)
    try:
        return response.read()
    finally:
        response.close()


def test_distill_text_answers_every_input_under_every_prompt_then_trains(
    services, client_for, make_tenant, student, providers
):
    teacher = providers["platform"]
    teacher.responder = colour_teacher
    # Two inputs are too long for the teacher (4 rows of 200: 2%, under the 5% limit); two others
    # meet a rate limit and a server error first, and are retried.
    for text in INPUTS[:2]:
        teacher.script_for(text, *[{"status": 400, "message": "This model's maximum context length is 8 tokens"}] * 2)
    teacher.script_for(INPUTS[2], {"status": 429, "retry_after": 0.2})
    teacher.script_for(INPUTS[3], {"status": 500})
    client = client_for(make_tenant())
    dataset = upload(client, inputs_file(INPUTS), kind=ingest_pb2.DATASET_KIND_INPUTS).dataset
    assert dataset.valid and dataset.rows == 100

    estimate = client.teacher.EstimateJob(teacher_pb2.CreateGenerationJobRequest(
        kind=teacher_pb2.JOB_KIND_TEXT_DISTILLATION, teacher="platform:colour-teacher", dataset_id=dataset.id,
        system_prompts=PROMPTS,
    ))  # fmt: skip
    assert estimate.rows == 200 and estimate.input_tokens > 0 and estimate.estimated_cost_usd == 0.0

    run = client.trainer.CreateRun(distill_request(dataset.id, student, model_name="colours-distilled", sft=LEARN))
    events = watch(client, run.id, timeout=300)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
    assert states(events) == [
        pb.RUN_STATE_QUEUED, pb.RUN_STATE_VALIDATING, pb.RUN_STATE_GENERATING, pb.RUN_STATE_TRAINING,
        pb.RUN_STATE_EVALUATING, pb.RUN_STATE_REGISTERING, pb.RUN_STATE_SUCCEEDED,
    ]  # fmt: skip

    # Generation progress came before training progress: rows, tokens and cost.
    progress = [e.progress for e in events if e.WhichOneof("payload") == "progress"]
    generating = [p for p in progress if p.rows_total]
    assert generating and generating[-1].rows_done == generating[-1].rows_total == 200
    assert generating[-1].rows_failed == 4 and generating[-1].usage.input_tokens > 0
    assert progress.index(generating[-1]) < max(i for i, p in enumerate(progress) if p.total_steps)

    # Every input under every prompt: 196 answers tagged with their prompt, 4 failures with their reason.
    (job,) = client.teacher.ListGenerationJobs(teacher_pb2.ListGenerationJobsRequest()).jobs
    assert job.state == teacher_pb2.JOB_STATE_SUCCEEDED
    assert (job.rows_total, job.rows_done, job.rows_failed) == (200, 196, 4)
    assert dict(job.rows_by_prompt) == {"french": 98, "shout": 98}
    assert {f.code for f in job.failures} == {"input_too_long"} and len(job.failures) == 4
    rows = [orjson.loads(line) for line in read_object(services, job.output_key).splitlines()]
    assert len(rows) == 196
    assert {(r["prompt_name"], r["messages"][0]["content"]) for r in rows} == {(p.name, p.text) for p in PROMPTS}
    assert all(r["messages"][2]["content"] == colour_teacher(Call("", "", None, r["messages"][1]["content"],
               r["messages"][0]["content"])).text for r in rows)  # fmt: skip
    # Each answered row was asked once; the rate-limited and failed-once rows twice each.
    answered = [c for c in teacher.calls if c.status == 200]
    assert len(answered) == 196 and len({(c.system_text, c.user_text) for c in answered}) == 196
    assert len(teacher.calls) == 196 + 4 + 2

    logs = [e.log.text for e in events if e.WhichOneof("payload") == "log"]
    assert any("skipped 4 rows" in line for line in logs), logs
    assert any("french: 98" in line and "shout: 98" in line for line in logs), logs
    usage = done.teacher_usage
    assert usage.requests == 196 + 4 + 2 and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.billed  # the platform's own teacher; a tenant's own key is not billed (test below)

    # The student learnt the task from the teacher's answers.
    assert done.metrics["eval_loss_after"] < done.metrics["eval_loss_before"]
    assert done.metrics["train_rows"] + done.metrics["eval_rows"] == 196
    model = client.registry.GetModel(registry_pb2.GetModelRequest(id=done.model_id))
    assert model.path == DISTILL and model.name == "colours-distilled"
    # ... and answers as the run reports, better than before, through Generate.
    assert_generate_answers_as_reported(services, client, model, done.metrics)


def test_too_many_failed_rows_fail_the_run_naming_them(services, client_for, make_tenant, student, providers):
    teacher = providers["platform"]
    for text in INPUTS[:2]:  # 2 of 20 inputs: 10% of the rows
        teacher.script_for(text, {"status": 400, "message": "This model's maximum context length is 8 tokens"})
    client = client_for(make_tenant())
    dataset = upload(client, inputs_file(INPUTS[:20]), kind=ingest_pb2.DATASET_KIND_INPUTS).dataset
    run = client.trainer.CreateRun(distill_request(dataset.id, student, prompts=PROMPTS[:1]))
    watch(client, run.id, timeout=120)
    failed = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert failed.state == pb.RUN_STATE_FAILED and failed.error.code == "generation_failed"
    assert "2 of 20 rows failed (10.0%), over the limit of 5%" in failed.error.message
    assert "input_too_long" in failed.error.message and failed.error.field == "teacher"
    assert client.registry.GetQuota(registry_pb2.GetQuotaRequest()).reserved == 0

    # A higher limit lets the same data through, training on the rest.
    again = client.trainer.CreateRun(distill_request(dataset.id, student, prompts=PROMPTS[:1],
                                                     max_failed_fraction=0.2))  # fmt: skip
    for text in INPUTS[:2]:
        teacher.script_for(text, {"status": 400, "message": "This model's maximum context length is 8 tokens"})
    watch(client, again.id, timeout=300)
    done = client.trainer.GetRun(pb.GetRunRequest(id=again.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
    assert done.metrics["teacher_rows"] == 18 and done.metrics["teacher_rows_failed"] == 2


def test_a_refused_key_fails_the_job_at_once_and_byok_usage_is_not_billed(services, client_for, make_tenant, providers):
    vendor = providers["openai"]
    vendor.valid_keys = {"sk-good-0123456789"}
    client = client_for(make_tenant())
    dataset = upload(client, inputs_file(INPUTS[:30]), kind=ingest_pb2.DATASET_KIND_INPUTS).dataset
    job_request = teacher_pb2.CreateGenerationJobRequest(
        kind=teacher_pb2.JOB_KIND_TEXT_DISTILLATION, teacher="openai:gpt-4.1-mini", dataset_id=dataset.id,
        system_prompts=PROMPTS,
    )  # fmt: skip
    # No key of the tenant's own and none of the deployment: refused before anything starts.
    with pytest.raises(Exception) as no_key:
        client.teacher.CreateGenerationJob(job_request)
    assert "distillery keys set openai" in no_key.value.details()

    canary = "sk-canary-" + "7f3a9c" * 6
    client.teacher.SetProviderKey(teacher_pb2.SetProviderKeyRequest(
        provider=teacher_pb2.PROVIDER_OPENAI, api_key=canary, skip_check=True))  # fmt: skip
    job = client.teacher.CreateGenerationJob(job_request)
    job = wait_final(client, job.id)
    assert job.state == teacher_pb2.JOB_STATE_FAILED
    assert "key was refused" in job.error and canary not in job.error and canary[-8:] not in job.error
    # No retry on an authentication error: at most one request per worker was in flight.
    assert 1 <= len(vendor.calls) <= 8 and all(c.status == 401 for c in vendor.calls)
    assert_nowhere_in_teacher_tables(services, canary)

    good = client.teacher.SetProviderKey(teacher_pb2.SetProviderKeyRequest(
        provider=teacher_pb2.PROVIDER_OPENAI, api_key="sk-good-0123456789"))  # fmt: skip
    assert good.last4 == "6789"
    job = wait_final(client, client.teacher.CreateGenerationJob(job_request).id)
    assert job.state == teacher_pb2.JOB_STATE_SUCCEEDED and job.rows_done == 60
    assert not job.usage.billed and job.usage.estimated_cost_usd > 0  # priced, but paid by the tenant's key
    expected = (job.usage.input_tokens * 0.40 + job.usage.output_tokens * 1.60) / 1e6
    assert job.usage.estimated_cost_usd == pytest.approx(expected)
    # The same run id (the idempotency key) gives the same job.
    keyed = teacher_pb2.CreateGenerationJobRequest()
    keyed.CopyFrom(job_request)
    keyed.run_id = "run_same"
    assert client.teacher.CreateGenerationJob(keyed).id == client.teacher.CreateGenerationJob(keyed).id
    # The same run id with other settings is another job, not a retry: refused, naming run_id.
    keyed.parameters.temperature = 0.5
    err = assert_refused(
        lambda: client.teacher.CreateGenerationJob(keyed), "run_id", grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "other settings" in err.details()


def wait_final(client, job_id: str, timeout: float = 60) -> teacher_pb2.GenerationJob:
    final = None
    for job in client.teacher.WatchGenerationJob(teacher_pb2.GetGenerationJobRequest(id=job_id), timeout=timeout):
        final = job
    assert final is not None and final.state in (
        teacher_pb2.JOB_STATE_SUCCEEDED,
        teacher_pb2.JOB_STATE_FAILED,
        teacher_pb2.JOB_STATE_CANCELLED,
    ), final
    return final


def assert_nowhere_in_teacher_tables(services, secret: str) -> None:
    """Neither the secret nor a long piece of it in any column of the teacher's tables."""
    pieces = [secret.encode(), secret[:12].encode(), secret[-8:].encode()]
    with psycopg.connect(services.postgres_url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'teacher'").fetchall()]  # fmt: skip
        assert "generation_jobs" in tables and "provider_keys" in tables
        for table in tables:
            for row in conn.execute(f'SELECT * FROM teacher."{table}"').fetchall():
                blob = repr(row).encode() + b"".join(v for v in row if isinstance(v, bytes))
                assert not any(p in blob for p in pieces), table


def test_augmentation_adds_new_pairs_from_train_rows_only(services, client_for, make_tenant, student, providers):
    teacher = providers["platform"]
    pairs = [(f"{c}, please ({i})", french) for i in range(6) for c, french in COLOURS.items()]  # 30 pairs
    written = iter(range(1000))

    def augmenting_teacher(call: Call) -> Answer:
        n = next(written)
        if n % 4 == 3:  # every fourth pair repeats an original (case and punctuation aside): dropped
            return Answer(text=orjson.dumps({"input": "RED please (0)!", "output": "rouge"}).decode())
        colour = list(COLOURS)[n % 5]
        return Answer(text=orjson.dumps({"input": f"say {colour} ({n})", "output": COLOURS[colour]}).decode())

    teacher.responder = augmenting_teacher
    client = client_for(make_tenant())
    body = b"".join(orjson.dumps({"system_prompt": "Translate the colour to French.", "input": i, "output": o})
                    + b"\n" for i, o in pairs)  # fmt: skip
    dataset = upload(client, body).dataset
    run = client.trainer.CreateRun(pb.CreateRunRequest(
        path=common_pb2.TRAINING_PATH_FINETUNE_TEXT, dataset_id=dataset.id, student_model=student, sft=QUICK,
        teacher="platform:colour-teacher", augment_count=12, eval_fraction=0.2,
    ))  # fmt: skip
    events = watch(client, run.id, timeout=300)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
    assert pb.RUN_STATE_GENERATING in states(events)
    logs = [e.log.text for e in events if e.WhichOneof("payload") == "log"]
    # The 3 pairs repeating an original were dropped: by the teacher (a train row, or each other) or
    # by the trainer (an eval row: it would leak the eval set into training).
    dropped = [int(line.split()[1]) for line in logs if line.startswith("dropped ")]
    assert sum(dropped) == 3, logs
    assert done.metrics["train_rows"] == 24 + 9 and done.metrics["eval_rows"] == 6

    # The teacher was shown train rows only, never an eval row.
    with psycopg.connect(services.postgres_url) as conn:
        split = conn.execute("SELECT split FROM trainer.runs WHERE id = %s", (run.id,)).fetchone()[0]
    eval_inputs = [orjson.loads(line)["messages"][1]["content"] for line in read_object(services,
                   split["eval_key"]).splitlines()]  # fmt: skip
    assert len(eval_inputs) == 6 and len(teacher.calls) == 12
    shown = "\n".join(c.user_text for c in teacher.calls)
    assert not any(f"input: {text}\n" in shown + "\n" for text in eval_inputs)
    train = read_object(services, split["train_key"]).splitlines()
    assert len(train) == 33 and sum(b"say " in line for line in train) == 9


def test_cancelling_a_run_while_generating_stops_the_teacher(services, client_for, make_tenant, student, providers):
    teacher = providers["platform"]
    teacher.latency_s = 0.3  # slow enough to cancel mid-way
    client = client_for(make_tenant())
    dataset = upload(client, inputs_file(INPUTS), kind=ingest_pb2.DATASET_KIND_INPUTS).dataset
    run = client.trainer.CreateRun(distill_request(dataset.id, student))
    wait_for(lambda: client.trainer.GetRun(pb.GetRunRequest(id=run.id)).progress.rows_done >= 4, timeout=60)
    client.trainer.CancelRun(pb.CancelRunRequest(id=run.id))
    jobs = client.teacher.ListGenerationJobs(teacher_pb2.ListGenerationJobsRequest()).jobs
    assert len(jobs) == 1
    job = wait_final(client, jobs[0].id, timeout=30)
    assert job.state == teacher_pb2.JOB_STATE_CANCELLED and job.rows_done < 200
    asked = len(teacher.calls)
    wait_for(lambda: all(c.status for c in teacher.calls), timeout=10)  # those in flight end
    assert len(teacher.calls) <= asked + 8  # no new requests after the cancel (at most one per worker in flight)
    assert client.registry.GetQuota(registry_pb2.GetQuotaRequest()).reserved == 0


def test_distillation_requests_are_checked_before_anything_starts(services, client_for, make_tenant, providers):
    client = client_for(make_tenant())
    inputs = upload(client, inputs_file(INPUTS[:5]), kind=ingest_pb2.DATASET_KIND_INPUTS).dataset
    cases = [
        (distill_request(inputs.id, "org/m", teacher=""), "teacher"),
        (distill_request(inputs.id, "org/m", teacher="nobody:model"), "teacher"),
        (distill_request(inputs.id, "org/m", augment_count=5), "augment_count"),
        (distill_request(inputs.id, "org/m", eval_dataset_id="ds_x"), "eval_dataset_id"),
        (distill_request(inputs.id, "org/m", max_failed_fraction=1.5), "max_failed_fraction"),
        (distill_request(inputs.id, "org/m", generation=teacher_pb2.GenerationParameters(temperature=5)),
         "generation.temperature"),
        (pb.CreateRunRequest(path=common_pb2.TRAINING_PATH_FINETUNE_TEXT, dataset_id="ds_x", student_model="org/m",
                             augment_count=5), "teacher"),
    ]  # fmt: skip
    for request, field in cases:
        assert_refused(partial(client.trainer.CreateRun, request), field)
    # A pairs dataset is not an input-only one: the run fails at VALIDATING, saying what to upload.
    pairs = upload(client, b'{"system_prompt": "s", "input": "i", "output": "o"}\n').dataset
    run = client.trainer.CreateRun(distill_request(pairs.id, "org/m"))
    watch(client, run.id, timeout=30)
    failed = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert failed.error.code == "invalid_dataset" and "--kind inputs" in failed.error.message
    # The teacher's estimate: exact rows, and a price from the table for a priced model.
    estimate = client.teacher.EstimateJob(teacher_pb2.CreateGenerationJobRequest(
        kind=teacher_pb2.JOB_KIND_TEXT_DISTILLATION, teacher="openai:gpt-4.1-mini", dataset_id=inputs.id,
        system_prompts=PROMPTS, parameters=teacher_pb2.GenerationParameters(max_output_tokens=100),
    ))  # fmt: skip
    assert (estimate.rows, estimate.output_tokens) == (10, 10 * 50)
    assert estimate.estimated_cost_usd == pytest.approx((estimate.input_tokens * 0.4 + 500 * 1.6) / 1e6)
