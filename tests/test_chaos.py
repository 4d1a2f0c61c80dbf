"""Faults end in a clear answer: the object store stalls, PostgreSQL is killed, and each comes back.

This module starts a stack of its own (PostgreSQL, the S3 server, the registry and ingest
services, on loopback), so that stopping its parts disturbs no other test. What it asserts:

- a stalled object store: an upload answers UNAVAILABLE naming the object store well before
  the client's deadline (no hang), ingest's health turns NOT_SERVING, then SERVING once the
  store answers again, and the next upload works;
- PostgreSQL killed: the registry's and ingest's health turn NOT_SERVING and calls answer
  UNAVAILABLE; PostgreSQL started again on the same data: both SERVING again, the very first
  call works (no stale pooled connection), and nothing stored before is lost or doubled.

- a Ray Train worker killed mid-run (on the session's stack, its own run only): the run
  resumes from its last checkpoint (not from step 1), succeeds once, and registers one model.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
from conftest import EventLoopThread, server_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_services import upload as upload_rows
from test_training import ROWS as TRAINING_ROWS
from test_training import states, training_step, wait_for, watch
from tiny_models import build_llama

from distillery.client import Client
from distillery.common.v1 import common_pb2
from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2, registry_pb2_grpc
from distillery.stack import servers
from distillery.tokens import new_admin_token, new_service_token
from distillery.trainer.v1 import trainer_pb2 as pb
from services.common.settings import S3Settings
from services.ingest import server as ingest_server
from services.ingest.settings import Settings as IngestSettings
from services.registry import server as registry_server
from services.registry.settings import Settings as RegistrySettings

pytestmark = pytest.mark.stack  # the first two tests start their own stack (no stack fixture to mark them)

ROWS = b"".join(b'{"system_prompt": "Be brief.", "input": "q%d", "output": "a%d"}\n' % (i, i) for i in range(50))
# Generous: a fault must be noticed and answered long before these, even on a busy 2-core machine.
CLIENT_DEADLINE_S = 120.0
HEALTH_WITHIN_S = 40.0


@dataclass
class ChaosStack:
    loop: EventLoopThread
    workdir: Path
    pg_port: int
    pg_password: str
    pg: Callable[[], psutil.Process]
    s3: psutil.Process
    addresses: dict[str, str]
    api_key: str

    def client(self) -> Client:
        return Client(self.addresses, self.api_key, timeout=CLIENT_DEADLINE_S)


def _start_pg(workdir: Path, port: int, password: str) -> psutil.Process:
    proc = servers.start_postgres(workdir / "pg", port, password, workdir / "logs" / "postgres.log")
    return psutil.Process(proc.pid)


def _postmaster(port: int) -> psutil.Process:
    """The server process listening on ``port`` (pg_ctl's child, whoever started it)."""
    for proc in psutil.process_iter(["name"]):
        try:
            if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in proc.net_connections("tcp")):
                return proc
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    raise AssertionError(f"nothing listens on PostgreSQL's port {port}")


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    workdir = tmp_path_factory.mktemp("chaos")
    pg_port, pg_password = servers.free_port(), secrets.token_urlsafe(16)
    _start_pg(workdir, pg_port, pg_password)
    ports = servers.S3Ports.pick()
    access, secret = "chaos-" + secrets.token_hex(6), secrets.token_urlsafe(24)
    s3_proc = servers.start_s3(workdir / "s3", ports, access, secret, workdir / "logs" / "s3.log")
    s3 = S3Settings(endpoint=f"127.0.0.1:{ports.s3}", access_key=access, secret_key=secret, bucket="chaos")
    url = servers.postgres_url(pg_port, pg_password)
    admin, token = new_admin_token(), new_service_token()
    loop = EventLoopThread()
    registry = loop.run(registry_server.create(RegistrySettings(server_settings(token), url, s3, admin)))
    ingest = loop.run(ingest_server.create(IngestSettings(
        server_settings(token), url, s3, registry.address, max_upload_bytes=8 * 1024 * 1024, work_dir=str(workdir),
    )))  # fmt: skip
    with grpc.insecure_channel(registry.address) as channel:
        stub, metadata = registry_pb2_grpc.RegistryServiceStub(channel), [("authorization", f"Bearer {admin}")]
        tenant = stub.CreateTenant(registry_pb2.CreateTenantRequest(name="chaos"), metadata=metadata, timeout=10)
        key = stub.CreateApiKey(registry_pb2.CreateApiKeyRequest(tenant_id=tenant.id, name="k"), metadata=metadata,
                                timeout=10)  # fmt: skip
    stack = ChaosStack(loop, workdir, pg_port, pg_password, lambda: _postmaster(pg_port), psutil.Process(s3_proc.pid),
                       {"registry": registry.address, "ingest": ingest.address}, key.secret)  # fmt: skip
    yield stack
    for server in (ingest, registry):
        loop.run(server.stop(1.0))
    loop.close()
    for proc in (stack.s3,):
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
    with contextlib.suppress(AssertionError):  # already gone
        stack.pg().send_signal(signal.SIGINT)


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        except grpc.RpcError:
            return -1


def wait_health(address: str, status: int) -> float:
    started = time.monotonic()
    while time.monotonic() - started < HEALTH_WITHIN_S:
        if health(address) == status:
            return time.monotonic() - started
        time.sleep(0.5)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    raise AssertionError(f"{address} was not {name} within {HEALTH_WITHIN_S:.0f}s")


def upload(client: Client, data: bytes) -> ingest_pb2.UploadDatasetResponse:
    header = ingest_pb2.UploadHeader(filename="pairs.jsonl", kind=ingest_pb2.DATASET_KIND_PAIRS,
                                     format=ingest_pb2.FILE_FORMAT_JSONL, size_bytes=len(data),
                                     sha256=hashlib.sha256(data).hexdigest())  # fmt: skip
    messages = [ingest_pb2.UploadDatasetRequest(header=header), ingest_pb2.UploadDatasetRequest(chunk={"data": data})]
    return client.ingest.UploadDataset(iter(messages))


def dataset_ids(client: Client) -> list[str]:
    return sorted(d.id for d in client.ingest.ListDatasets(ingest_pb2.ListDatasetsRequest()).datasets)


def test_a_stalled_object_store_is_answered_unavailable_then_recovers(chaos: ChaosStack) -> None:
    client = chaos.client()
    first = upload(client, ROWS).dataset.id
    chaos.s3.send_signal(signal.SIGSTOP)  # the store accepts connections and never answers
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            upload(client, ROWS.replace(b"Be brief.", b"Be short."))
        took = time.monotonic() - started
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
        assert "object store" in refused.value.details()
        assert took < CLIENT_DEADLINE_S / 2, f"answered after {took:.0f}s: close to the client's deadline"
        wait_health(chaos.addresses["ingest"], health_pb2.HealthCheckResponse.NOT_SERVING)
    finally:
        chaos.s3.send_signal(signal.SIGCONT)
    wait_health(chaos.addresses["ingest"], health_pb2.HealthCheckResponse.SERVING)
    second = upload(client, ROWS.replace(b"Be brief.", b"Be short.")).dataset.id
    assert dataset_ids(client) == sorted([first, second])  # the refused upload left nothing behind


def test_postgres_killed_is_unavailable_not_serving_then_everything_comes_back(chaos: ChaosStack) -> None:
    client = chaos.client()
    upload(client, ROWS.replace(b"Be brief.", b"Be terse."))
    before = dataset_ids(client)
    chaos.pg().kill()  # SIGKILL: no goodbye to the pooled connections
    try:
        for name in ("registry", "ingest"):
            wait_health(chaos.addresses[name], health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(grpc.RpcError) as refused:
            dataset_ids(client)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
    finally:
        _start_pg(chaos.workdir, chaos.pg_port, chaos.pg_password)
    for name in ("registry", "ingest"):
        wait_health(chaos.addresses[name], health_pb2.HealthCheckResponse.SERVING)
    assert dataset_ids(client) == before  # the first call after the restart works; nothing lost or doubled
    with grpc.insecure_channel(chaos.addresses["registry"]) as channel:
        me = registry_pb2_grpc.RegistryServiceStub(channel).WhoAmI(
            registry_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {chaos.api_key}")], timeout=10
        )
    assert me.name == "chaos"
    assert os.path.exists(chaos.workdir / "pg" / "PG_VERSION")


# --- a Ray worker killed mid-run (the session's stack: its own run only) ---


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_llama(tmp_path_factory.mktemp("chaos-student") / "tiny-llama"))


def train_workers() -> list[psutil.Process]:
    """Ray Train's worker processes now running (their process title names the worker actor)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if "RayTrainWorker" in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
    return found


def test_a_ray_worker_killed_mid_run_resumes_from_its_checkpoint(services, client_for, make_tenant, tiny_student):
    client = client_for(make_tenant())
    dataset = upload_rows(client, TRAINING_ROWS).dataset
    sft = pb.SftSettings(
        max_steps=60, learning_rate=5e-3, batch_size=4, checkpoint_every_steps=10, lora_r=8, early_stopping_patience=-1
    )
    request = pb.CreateRunRequest(path=common_pb2.TRAINING_PATH_FINETUNE_TEXT, dataset_id=dataset.id,
                                  student_model=tiny_student, sft=sft)  # fmt: skip
    run = client.trainer.CreateRun(request)
    wait_for(lambda: training_step(client, run.id) >= 15, timeout=300)  # a checkpoint at step 10 is stored
    workers = train_workers()
    assert workers, "no Ray Train worker process found"
    killed_at = client.trainer.GetRun(pb.GetRunRequest(id=run.id)).progress.step
    for worker in workers:
        worker.kill()
    events = watch(client, run.id, timeout=400)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
    steps = [e.progress.step for e in events if e.WhichOneof("payload") == "progress" and e.progress.step]
    # The job says where it resumed: a stored checkpoint (every 10 steps), not step 0, and not past the kill.
    lines = [e.log.text for e in events if e.WhichOneof("payload") == "log"]
    resumed = [int(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("resuming from the checkpoint at step")]
    assert len(resumed) == 1 and resumed[0] % 10 == 0 and 10 <= resumed[0] <= killed_at, (resumed, killed_at, steps)
    assert steps[-1] == sft.max_steps
    # One run, one model, each final state once; the events' sequence numbers are unique.
    assert states(events).count(pb.RUN_STATE_SUCCEEDED) == 1
    assert len({e.sequence for e in events}) == len(events)
    models = client.registry.ListModels(registry_pb2.ListModelsRequest()).models
    assert [m.id for m in models] == [done.model_id]


TOOL_CALLS = Path(__file__).resolve().parent.parent / "examples" / "tools" / "weather_calls.jsonl"


def test_a_ray_worker_killed_mid_sft_of_a_tool_run_resumes_from_its_checkpoint(
    services, client_for, make_tenant, tiny_student
):
    """The tool-calling recipe as the text one: a distill-tools run on a tool-calls dataset whose Ray Train worker is
    killed in SFT resumes from its last checkpoint (every 10 steps), without evaluating the base student again,
    succeeds once and registers one model. Only this session's workers are killed (its S3 endpoint in their
    environment): other sessions on the machine may be training too."""
    client = client_for(make_tenant())
    dataset = upload_rows(
        client, TOOL_CALLS.read_bytes(), name="weather_calls.jsonl", kind=ingest_pb2.DATASET_KIND_TOOL_CALLS
    ).dataset
    assert dataset.valid, dataset.report.violations
    sft = pb.SftSettings(max_steps=40, learning_rate=5e-3, batch_size=4, checkpoint_every_steps=10, lora_r=8,
                         eval_every_steps=-1, early_stopping_patience=-1)  # fmt: skip
    started = time.monotonic()
    run = client.trainer.CreateRun(pb.CreateRunRequest(
        path=common_pb2.TRAINING_PATH_DISTILL_TOOLS, dataset_id=dataset.id, student_model=tiny_student, sft=sft,
    ))  # fmt: skip
    wait_for(lambda: training_step(client, run.id) >= 15, timeout=300, every=0.1)  # a checkpoint at step 10 is stored
    to_kill = time.monotonic() - started

    def ours(proc: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return proc.environ().get("DISTILLERY_S3_ENDPOINT") == services.s3.endpoint
        return False

    workers = [proc for proc in train_workers() if ours(proc)]
    assert workers, "no Ray Train worker process of this session found"
    for worker in workers:
        worker.kill()
    time.sleep(1.0)  # what the killed worker pushed last: at most the step it was killed at
    killed_at = client.trainer.GetRun(pb.GetRunRequest(id=run.id)).progress.step
    events = watch(client, run.id, timeout=400)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
    steps = [e.progress.step for e in events if e.WhichOneof("payload") == "progress" and e.progress.step]
    lines = [e.log.text for e in events if e.WhichOneof("payload") == "log"]
    resumed = [int(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("resuming from the checkpoint at step")]
    print(f"tool run: killed at step {killed_at} after {to_kill:.0f} s, resumed from {resumed}, done after "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip
    assert len(resumed) == 1 and resumed[0] % 10 == 0 and 10 <= resumed[0] <= killed_at, (resumed, killed_at, steps)
    assert sum(line.startswith("evaluating the base student") for line in lines) == 1, lines  # once per run
    assert steps[-1] == sft.max_steps and done.metrics["steps"] == sft.max_steps
    assert {"base_correct_rate", "sft_correct_rate", "eval_loss_before"} <= set(done.metrics)
    assert states(events).count(pb.RUN_STATE_SUCCEEDED) == 1
    assert len({e.sequence for e in events}) == len(events)
    models = client.registry.ListModels(registry_pb2.ListModelsRequest()).models
    assert [m.id for m in models] == [done.model_id]
