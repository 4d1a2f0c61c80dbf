"""Least-privilege training jobs: a run's Ray job gets only what its run needs, and no secret lands in
Ray's logs.

- A real tiny finetune-text run through the stack, then every file under the Ray head's temp dir (its
  session logs, the runtime env agent's log, the job driver's log) and the job's logs are searched for
  every secret the stack knows: the S3 access and secret keys, the service and admin tokens, the
  tenant's API key, the run's push token and the job's own S3 keys. None may appear.
- The run's push token is refused once the run is final, and once its lifetime is over.
- The job's S3 identity (a per-run IAM user on a SeaweedFS with its IAM API writable) reads its inputs
  and its own prefix, and nothing of another run or tenant; once revoked it reads nothing.
- The presigned URL the job gets on its command line reads its secrets object and no other.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import urllib3
from minio import Minio
from minio.error import S3Error
from test_services import upload
from test_training import QUICK, ROWS, run_request, watch
from test_training import student as student  # a fixture

from distillery.trainer.v1 import trainer_pb2 as pb
from distillery.trainer.v1 import trainer_pb2_grpc
from services.common.errors import Unauthenticated
from services.common.objects import ObjectStore
from services.common.settings import S3Settings
from services.trainer import job_access, runs

PUSH_TOKEN = re.compile(rb"drt_[A-Za-z0-9_-]{20,}")


def files_under(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


def secrets_found(texts: dict[str, bytes], known: dict[str, str]) -> dict[str, list[str]]:
    """For each place, the names of the secrets in it (a push token is found by its shape as well)."""
    found: dict[str, list[str]] = {}
    for place, data in texts.items():
        names = [name for name, value in known.items() if value and value.encode() in data]
        if PUSH_TOKEN.search(data) and "push token" not in names:
            names.append("a push token (drt_...)")
        if names:
            found[place] = sorted(names)
    return found


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The push tokens and job S3 keys the trainer (in this process) hands out while the test runs."""
    seen: dict[str, list[str]] = {"push": [], "keys": []}
    new_token = job_access.new_push_token

    def token(lifetime_s: float, now: float | None = None) -> str:
        value = new_token(lifetime_s, now)
        seen["push"].append(value)
        return value

    grant = job_access.ObjectIam.grant

    def granted(self: job_access.ObjectIam, *args: Any, **kwargs: Any) -> tuple[str, str]:
        keys = grant(self, *args, **kwargs)
        seen["keys"].extend(keys)
        return keys

    monkeypatch.setattr(job_access, "new_push_token", token)
    monkeypatch.setattr(job_access.ObjectIam, "grant", granted)
    return seen


def test_no_secret_reaches_ray_logs_and_the_push_token_ends_with_its_run(
    services, client_for, make_tenant, student, recorded
):
    tenant = make_tenant()
    client = client_for(tenant)
    dataset = upload(client, ROWS).dataset
    run = client.trainer.CreateRun(run_request(dataset.id, student, QUICK))
    watch(client, run.id)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
    assert recorded["push"], "the trainer made no push token"

    known = {
        "S3 access key": services.s3.access_key, "S3 secret key": services.s3.secret_key,
        "service token": services.service_token, "admin token": services.admin_token,
        "API key": tenant.api_key, "teacher master key": services.master_key,
        **{f"push token {i}": t for i, t in enumerate(recorded["push"])},
        # The job's S3 secret keys. Its access key *id* (no secret) is in the presigned URL on its command line
        # (X-Amz-Credential), checked below; that identity is deleted when the job ends.
        **{f"job S3 secret key {i}": k for i, k in enumerate(recorded["keys"][1::2])},
    }  # fmt: skip
    texts = {str(p): p.read_bytes() for p in files_under(services.ray.temp_dir)}
    assert len(texts) > 10, sorted(texts)  # the session's logs are there
    logs = client.trainer.GetRunLogs(pb.GetRunLogsRequest(id=run.id, tail=10000)).lines
    assert logs
    texts["job logs (GetRunLogs)"] = "\n".join(logs).encode()
    found = secrets_found(texts, known)
    print("secrets found:", found)
    assert found == {}
    for access_key in recorded["keys"][0::2]:
        for place, data in texts.items():
            named = data.count(access_key.encode())
            assert named == data.count(f"X-Amz-Credential={access_key}%2F".encode()), place

    # The job had S3 keys scoped to its run (the session's S3 server lets the trainer make them), now revoked.
    assert recorded["keys"], "the job got the bucket-wide key"
    job = Minio(services.s3.endpoint, access_key=recorded["keys"][0], secret_key=recorded["keys"][1], secure=False)
    with pytest.raises(S3Error, match=r"InvalidAccessKeyId|AccessDenied"):
        job.get_object(services.s3.bucket, f"tenants/{tenant.tenant_id}/runs/{run.id}/spec.json")
    # The job's secrets object was read once and removed; the presigned URL on its command line reads nothing.
    store = ObjectStore(services.s3)
    prefix = f"tenants/{tenant.tenant_id}/runs/{run.id}"
    assert f"{prefix}/{job_access.SECRETS_NAME}" not in store.keys(prefix + "/")

    # The push token is refused now that the run is final.
    with grpc.insecure_channel(services.address("trainer")) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ReportRunEvents(
                pb.ReportRunEventsRequest(run_id=run.id, events=[pb.RunEvent(log=pb.LogLine(text="late"))]),
                metadata=(("authorization", f"Bearer {recorded['push'][-1]}"),),
                timeout=10,
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "final" in (refused.value.details() or "")


def _run(state: int, token: str) -> runs.Run:
    now = datetime.now(UTC)
    return runs.Run(
        id="run_x", tenant_id="t", idempotency_key="", path=1, mode=0, state=state, request={},
        created_at=now, updated_at=now, push_token_hash=job_access.hash_token(token), job_attempt=1,
    )  # fmt: skip


def test_a_push_token_holds_for_its_run_until_it_is_final_or_expires():
    token = job_access.new_push_token(60)
    caller = job_access.verify_push(_run(pb.RUN_STATE_TRAINING, token), token)
    assert (caller.tenant_id, caller.run_id) == ("t", "run_x")
    with pytest.raises(Unauthenticated, match="not a valid push token"):
        job_access.verify_push(_run(pb.RUN_STATE_TRAINING, token), job_access.new_push_token(60))
    with pytest.raises(Unauthenticated, match="not a valid push token"):
        job_access.verify_push(None, token)
    for final in runs.FINAL:
        with pytest.raises(Unauthenticated, match="is final"):
            job_access.verify_push(_run(final, token), token)
    old = job_access.new_push_token(60, now=time.time() - 61)
    with pytest.raises(Unauthenticated, match="expired"):
        job_access.verify_push(_run(pb.RUN_STATE_TRAINING, old), old)
    # The expiry is part of what is hashed: a token with a later expiry written in is another token.
    forged = re.sub(r"^drt_\d+_", f"drt_{int(time.time()) + 3600}_", old)
    with pytest.raises(Unauthenticated, match="not a valid push token"):
        job_access.verify_push(_run(pb.RUN_STATE_TRAINING, old), forged)


def test_a_job_s3_identity_reaches_its_run_and_inputs_only(s3_settings: S3Settings):
    """On the session's S3 server, started with its IAM API writable (conftest), as the stack's must be."""
    iam_s3 = s3_settings
    admin = ObjectStore(iam_s3)
    admin.ensure_bucket()
    t1, t2 = f"tenants/t1-{secrets.token_hex(3)}", f"tenants/t2-{secrets.token_hex(3)}"
    prefix, other_run, other_tenant = f"{t1}/runs/run_a", f"{t1}/runs/run_b", f"{t2}/runs/run_c"
    train, evals, other_split = f"{t1}/splits/s1/train.jsonl", f"{t1}/splits/s1/eval.jsonl", f"{t1}/splits/s2/t.jsonl"
    continued = f"{t1}/runs/run_m/model/"  # the artifacts of a registered model the run trains further
    for key in (f"{prefix}/spec.json", f"{other_run}/result.json", f"{other_tenant}/spec.json", train, evals,
                other_split, f"{continued}adapter_config.json", f"{continued}sub/weights.bin",
                f"{t1}/runs/run_m/result.json", f"{t1}/runs/run_m/modelx/a"):  # fmt: skip
        admin.put_bytes(key, b"{}")
    iam = job_access.ObjectIam(iam_s3)
    assert iam.available()
    user = job_access.iam_user(f"run_a{secrets.token_hex(3)}")
    access, secret = iam.grant(user, prefix, [train, evals, continued])
    job = Minio(iam_s3.endpoint, access_key=access, secret_key=secret, secure=False, region=iam_s3.region)
    bucket = iam_s3.bucket

    def refused(call: Any) -> bool:
        try:
            call()
        except S3Error as err:
            return err.code in ("AccessDenied", "InvalidAccessKeyId")
        return False

    # Its inputs and its own prefix: read, write, list, delete.
    assert job.get_object(bucket, train).read() == b"{}" and job.get_object(bucket, evals).read() == b"{}"
    assert job.get_object(bucket, f"{prefix}/spec.json").read() == b"{}"
    job.put_object(bucket, f"{prefix}/model/adapter.bin", io.BytesIO(b"w" * 100), 100)
    assert [o.object_name for o in job.list_objects(bucket, prefix + "/", recursive=True)] == [
        f"{prefix}/model/adapter.bin", f"{prefix}/spec.json",
    ]  # fmt: skip
    job.remove_object(bucket, f"{prefix}/model/adapter.bin")
    # The folder it continues from: read and list, nothing beside it, no writing.
    assert sorted(o.object_name for o in job.list_objects(bucket, continued, recursive=True)) == [
        f"{continued}adapter_config.json", f"{continued}sub/weights.bin",
    ]  # fmt: skip
    assert job.get_object(bucket, f"{continued}sub/weights.bin").read() == b"{}"
    assert refused(lambda: job.get_object(bucket, f"{t1}/runs/run_m/result.json"))
    assert refused(lambda: job.get_object(bucket, f"{t1}/runs/run_m/modelx/a"))
    assert refused(lambda: list(job.list_objects(bucket, f"{t1}/runs/run_m/", recursive=True)))
    assert refused(lambda: job.put_object(bucket, f"{continued}x", io.BytesIO(b"x"), 1))
    # Nothing else: another run's or tenant's objects, another split, writing its inputs, listing the bucket.
    assert refused(lambda: job.get_object(bucket, f"{other_run}/result.json"))
    assert refused(lambda: job.get_object(bucket, f"{other_tenant}/spec.json"))
    assert refused(lambda: job.get_object(bucket, other_split))
    assert refused(lambda: job.put_object(bucket, f"{other_run}/x", io.BytesIO(b"x"), 1))
    assert refused(lambda: job.put_object(bucket, train, io.BytesIO(b"x"), 1))
    assert refused(lambda: job.remove_object(bucket, f"{other_tenant}/spec.json"))
    assert refused(lambda: list(job.list_objects(bucket, f"{t1}/", recursive=True)))
    assert refused(lambda: list(job.list_objects(bucket, recursive=True)))
    # Nor the IAM API: no new user, no new key, no wider policy for itself.
    own_iam = job_access.ObjectIam(S3Settings(iam_s3.endpoint, access, secret, bucket=bucket))
    everything = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"],
                                                                     "Resource": ["arn:aws:s3:::*"]}]})  # fmt: skip
    for action, params in (("CreateUser", {"UserName": f"escalate-{secrets.token_hex(3)}"}),
                           ("PutUserPolicy", {"UserName": user, "PolicyName": "all", "PolicyDocument": everything}),
                           ("CreateAccessKey", {"UserName": "distillery"}),
                           ("ListUsers", {})):  # fmt: skip
        status, text = own_iam._call(action, **params)
        assert status != 200, f"a job's keys could call IAM {action}: {text[:300]}"
    assert refused(lambda: job.get_object(bucket, f"{other_tenant}/spec.json"))  # still scoped after trying
    # The store lets a user make more keys for itself: they carry the same run-scoped policy and go with the user.
    status, text = own_iam._call("CreateAccessKey", UserName=user)
    if status == 200:
        made = job_access._xml(text, "AccessKeyId"), job_access._xml(text, "SecretAccessKey")
        extra = Minio(iam_s3.endpoint, access_key=made[0], secret_key=made[1], secure=False, region=iam_s3.region)
        assert refused(lambda: extra.get_object(bucket, f"{other_tenant}/spec.json"))
        assert extra.get_object(bucket, f"{prefix}/spec.json").read() == b"{}"
    # Ray Train's checkpoint filesystem (pyarrow) works with the scoped keys.
    from services.trainer.recipes.job import checkpoint_storage

    scoped = S3Settings(iam_s3.endpoint, access, secret, bucket=bucket)
    fs = checkpoint_storage(scoped)
    fs.create_dir(f"{bucket}/{prefix}/ray/run_a/checkpoint_0")
    with fs.open_output_stream(f"{bucket}/{prefix}/ray/run_a/checkpoint_0/state.bin") as out:
        out.write(b"s" * (6 * 1024 * 1024))  # a multipart upload
    fs.delete_dir(f"{bucket}/{prefix}/ray/run_a")
    # Revoked at the run's end: the keys read nothing any more.
    iam.revoke(user)
    iam.revoke(user)  # twice is fine
    assert refused(lambda: job.get_object(bucket, f"{prefix}/spec.json"))
    if status == 200:
        assert refused(lambda: extra.get_object(bucket, f"{prefix}/spec.json"))


def test_the_secrets_url_reads_its_object_only(s3_settings: S3Settings):
    store = ObjectStore(s3_settings)
    store.ensure_bucket()
    prefix = f"tenants/t-{secrets.token_hex(4)}/runs/run_a"
    store.put_bytes(f"{prefix}/{job_access.SECRETS_NAME}", b'{"ok": 1}')
    store.put_bytes(f"{prefix}/spec.json", b"{}")
    url = job_access.presigned_get(s3_settings, f"{prefix}/{job_access.SECRETS_NAME}", timedelta(seconds=60))
    assert urllib3.request("GET", url).data == b'{"ok": 1}'
    assert urllib3.request("GET", url.replace(job_access.SECRETS_NAME, "spec.json")).status == 403
    assert urllib3.request("PUT", url, body=b"x").status == 403
