"""A generation job that cannot succeed stops paying: once its failed rows pass the job's
``max_failed_fraction`` no row can save it, so no more rows are asked for, the rows in flight
are cancelled and the job fails naming the limit and the first failures. The requests the
(fake) vendor received are counted."""

from __future__ import annotations

import orjson
from test_distill_text import PROMPTS, wait_final
from test_services import upload

from distillery.ingest.v1 import ingest_pb2
from distillery.teacher.v1 import teacher_pb2

ROWS = 100
# The stack's teacher settings (tests/conftest.py): retries per row, and workers per provider.
MAX_ATTEMPTS = 4
CONCURRENCY = 8


def test_a_job_whose_failures_pass_its_limit_stops_asking(services, client_for, make_tenant, providers):
    vendor = providers["openai"]
    vendor.script(*[{"status": 500}] * (ROWS * MAX_ATTEMPTS + 50))  # every request: the vendor's server error
    client = client_for(make_tenant())
    inputs = b"".join(orjson.dumps({"input": f"question {i}"}) + b"\n" for i in range(ROWS))
    dataset = upload(client, inputs, kind=ingest_pb2.DATASET_KIND_INPUTS).dataset
    client.teacher.SetProviderKey(teacher_pb2.SetProviderKeyRequest(
        provider=teacher_pb2.PROVIDER_OPENAI, api_key="sk-test-0123456789", skip_check=True))  # fmt: skip
    job = client.teacher.CreateGenerationJob(teacher_pb2.CreateGenerationJobRequest(
        kind=teacher_pb2.JOB_KIND_TEXT_DISTILLATION, teacher="openai:gpt-4.1-mini", dataset_id=dataset.id,
        system_prompts=PROMPTS[:1], max_failed_fraction=0.05,
    ))  # fmt: skip
    assert job.rows_total == ROWS
    job = wait_final(client, job.id, timeout=120)

    sent = len(vendor.calls)
    print(f"requests sent: {sent}; job: {job.error}")
    assert job.state == teacher_pb2.JOB_STATE_FAILED
    # 5 failed rows are allowed; the 6th ends the job. Besides those 6 rows, only the rows in flight
    # then (one a worker) were asked, each at most MAX_ATTEMPTS times: not every row of the job.
    assert sent <= (6 + CONCURRENCY) * MAX_ATTEMPTS, f"{sent} requests sent"
    assert "over the limit of 5%" in job.error and "max_failed_fraction" in job.error, job.error
    assert "retries_exhausted" in job.error, job.error
    assert sent >= 6 * MAX_ATTEMPTS and all(c.status == 500 for c in vendor.calls)
    assert 6 <= job.rows_failed < 6 + CONCURRENCY and job.rows_done == 0
