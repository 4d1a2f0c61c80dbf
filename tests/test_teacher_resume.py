"""A teacher killed in the middle of a generation job resumes it, in a new process, without
asking the provider again for any row it had finished.

The teacher runs as its own process (``python -m services.teacher``) against the session's
PostgreSQL, S3, registry and ingest; the provider is the session's local OpenAI-protocol
server, which counts every request. SIGKILL gives the process no chance to tidy up: only what
it stored row by row survives. The job is then resumed by whichever teacher instance takes
its lapsed lease first: the new process or the session's in-process teacher (both ask the
same server), as replicas of one deployment would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psycopg
from provider_servers import ProviderServer
from test_distill_text import PROMPTS, inputs_file, wait_final
from test_services import upload

from distillery.client import Client
from distillery.ingest.v1 import ingest_pb2
from distillery.teacher.v1 import teacher_pb2

ROOT = Path(__file__).resolve().parent.parent
INPUTS = [f"question number {i}" for i in range(60)]  # x 2 prompts = 120 rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_teacher(services, provider: ProviderServer, port: int, log: Path) -> subprocess.Popen[bytes]:
    s3 = services.s3
    env = {
        **os.environ,
        "DISTILLERY_GRPC_ADDRESS": f"127.0.0.1:{port}", "DISTILLERY_DATABASE_URL": services.postgres_url,
        "DISTILLERY_S3_ENDPOINT": s3.endpoint, "DISTILLERY_S3_ACCESS_KEY": s3.access_key,
        "DISTILLERY_S3_SECRET_KEY": s3.secret_key, "DISTILLERY_S3_BUCKET": s3.bucket,
        "DISTILLERY_REGISTRY_ADDRESS": services.address("registry"),
        "DISTILLERY_INGEST_ADDRESS": services.address("ingest"), "DISTILLERY_SERVICE_TOKEN": services.service_token,
        "DISTILLERY_PLATFORM_BASE_URL": provider.base_url, "DISTILLERY_PLATFORM_CONCURRENCY": "4",
        "DISTILLERY_TEACHER_LEASE_S": "0.5",
    }  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.teacher"], cwd=ROOT, env=env, stdout=out, stderr=out)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
    finally:
        channel.close()
    return proc


def finished_rows(services, job_id: str) -> set[int]:
    with psycopg.connect(services.postgres_url) as conn:
        rows = conn.execute("SELECT row FROM teacher.generation_rows WHERE job_id = %s", (job_id,)).fetchall()
    return {r[0] for r in rows}


def test_a_killed_teacher_resumes_without_asking_again_for_a_finished_row(
    services, client_for, make_tenant, providers, tmp_path
):
    tenant = make_tenant()
    dataset = upload(client_for(tenant), inputs_file(INPUTS), kind=ingest_pb2.DATASET_KIND_INPUTS).dataset
    port, log = free_port(), tmp_path / "teacher.log"
    provider = providers["platform"]
    provider.latency_s = 0.05
    first = start_teacher(services, provider, port, log)
    client = Client({**services.addresses, "teacher": f"127.0.0.1:{port}"}, tenant.api_key, timeout=20)
    try:
        job = client.teacher.CreateGenerationJob(teacher_pb2.CreateGenerationJobRequest(
            kind=teacher_pb2.JOB_KIND_TEXT_DISTILLATION, teacher="platform:counted", dataset_id=dataset.id,
            system_prompts=PROMPTS,
        ))  # fmt: skip
        deadline = time.monotonic() + 60
        while len(finished_rows(services, job.id)) < 40:
            assert time.monotonic() < deadline and first.poll() is None, log.read_text()
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        before = finished_rows(services, job.id)
        asked_before = len(provider.calls)
        assert 40 <= len(before) < 120

        second = start_teacher(services, provider, port, log)
        try:
            final = wait_final(client, job.id, timeout=90)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(15)
    finally:
        if first.poll() is None:
            first.kill()
        client.close()

    assert final.state == teacher_pb2.JOB_STATE_SUCCEEDED, (final, log.read_text())
    assert (final.rows_done, final.rows_failed) == (120, 0)
    assert dict(final.rows_by_prompt) == {"french": 60, "shout": 60}
    # No finished row was asked for again; the rows in flight at the kill were asked at most twice.
    asked: dict[tuple[str, str], int] = {}
    for call in provider.calls:
        asked[(call.system_text, call.user_text)] = asked.get((call.system_text, call.user_text), 0) + 1
    row_key = {i * 2 + p: (prompt.text, text) for i, text in enumerate(INPUTS) for p, prompt in enumerate(PROMPTS)}
    assert all(asked[row_key[row]] == 1 for row in before)
    assert set(asked) == set(row_key.values()) and max(asked.values()) <= 2
    assert len(provider.calls) - asked_before <= 120 - len(before) + 4  # the rest, plus those in flight
    assert first.returncode == -signal.SIGKILL and second.returncode is not None
