"""What a training job may reach, and how it gets its secrets without Ray writing them down.

A run's Ray job is given only what its run needs:

- **S3 keys scoped to the run** (``ObjectIam``): when the trainer submits the job it creates an IAM user
  ``job-<run id>`` on the object store (the embedded IAM API on the S3 port: ``CreateUser``,
  ``CreateAccessKey``, ``PutUserPolicy``) whose policy (``job_policy``) allows reading the run's inputs
  (its train and eval split keys, and the artifacts of a registered model it trains further) and reading,
  writing, listing and deleting under the run's own prefix
  ``tenants/<tenant>/runs/<run>/`` (spec.json, model/, result.json, error.json, the Ray Train checkpoints)
  and nothing else; the user is deleted when the job ends and when the run ends. SeaweedFS needs
  ``-s3.iam.readOnly=false`` for this. ``DISTILLERY_JOB_S3_ACCESS`` says what the trainer does:
  ``scoped`` (refuse to train without scoped keys), ``shared`` (the trainer's own bucket-wide key, for
  an object store without an IAM API; still never in the job's environment), or ``auto`` (the default:
  scoped when the object store allows it, else shared, with a warning in the log).
- **A push token for its run only** (``new_push_token``): ``drt_<expiry>_<random>``; only its hash is
  kept on the run. ``verify_push`` refuses it for another run, once the run is final, and after its
  expiry (``DISTILLERY_RUN_TOKEN_LIFETIME_S``). The expiry is part of the hashed token, so it cannot be
  moved.

Ray writes a job's runtime environment (its ``env_vars``) and its entrypoint command line into its
session logs (``runtime_env_agent.log``, the job driver's log), so no secret goes there. The secrets
(``JobSecrets``: the S3 keys and the push token) are an object of their own, ``<run prefix>/job-secrets.json``,
written by the trainer just before the submission; the entrypoint gets a presigned GET URL for that one
object (``--secrets-url``, valid ``DISTILLERY_JOB_SECRETS_URL_S``, default 10 minutes). The job's driver
reads it, deletes the object with its scoped keys, and hands the secrets to its Ray Train workers in
their ``train_loop_config`` (process memory, never an environment Ray logs). So the URL in the logs
reads nothing once the job has started, and what it read holds only for this run.

The Hugging Face cache of a job is its tenant's own (``HF_HOME`` =
``<DISTILLERY_JOB_CACHE_DIR>/<tenant>/huggingface``): one tenant's job never finds another's downloads.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
import urllib.parse
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import urllib3
from minio import Minio
from minio.credentials import Credentials
from minio.helpers import sha256_hash
from minio.signer import sign_v4_s3

from services.common import auth
from services.common.errors import InvalidArgument, Unauthenticated, Unavailable
from services.common.objects import ObjectStore
from services.common.settings import S3Settings
from services.trainer import runs
from services.trainer.recipes.job_spec import SECRETS_NAME

log = logging.getLogger("distillery.trainer.job_access")

__all__ = ["SECRETS_NAME", "JobSecrets", "ObjectIam", "job_policy", "new_push_token", "verify_push"]

MODES = ("auto", "scoped", "shared")
IAM_VERSION = "2010-05-08"
IAM_TIMEOUT = urllib3.Timeout(connect=3.0, read=15.0)
PUSH_TOKEN_PREFIX = "drt_"
_PUSH_TOKEN = re.compile(r"^drt_(\d{1,12})_[A-Za-z0-9_-]{20,}$")


# --- the push token ---


def new_push_token(lifetime_s: float, now: float | None = None) -> str:
    """A run's push token, expiring ``lifetime_s`` from ``now``; keep only ``hash_token`` of it."""
    expires = int((time.time() if now is None else now) + lifetime_s)
    return f"{PUSH_TOKEN_PREFIX}{expires}_{secrets.token_urlsafe(30)}"


def hash_token(token: str) -> str:
    return auth.hash_key(token)


def verify_push(run: runs.Run | None, token: str, now: float | None = None) -> auth.Caller:
    """The caller a training job pushes as: the run's tenant, naming the run; Unauthenticated when ``token`` is
    not the run's current token, the run is final, or the token has expired."""
    if run is None or not run.push_token_hash or not auth.same_secret(hash_token(token), run.push_token_hash):
        raise Unauthenticated("not a valid push token for this run")
    if run.state in runs.FINAL:
        raise Unauthenticated(f"run {run.id} is final ({runs.state_name(run.state)}): its push token no longer holds")
    shape = _PUSH_TOKEN.match(token)
    if shape is None or int(shape.group(1)) < (time.time() if now is None else now):
        raise Unauthenticated(f"the push token of run {run.id} has expired; the run's next job gets a new one")
    return auth.run_caller(run.tenant_id, run.id)


# --- the secrets object ---


@dataclass(frozen=True)
class JobSecrets:
    """What the job's driver reads from ``job-secrets.json``: its S3 keys and its push token."""

    s3_access_key: str
    s3_secret_key: str
    push_token: str

    def __repr__(self) -> str:  # never print a secret
        return "JobSecrets(...)"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()


def presigned_get(s3: S3Settings, key: str, expires: timedelta, keys: tuple[str, str] | None = None) -> str:
    """A URL that reads ``key`` (and nothing else) until ``expires`` has passed, at the endpoint jobs reach, signed
    with ``keys`` (access, secret; default: the trainer's). A URL names its signer's access key id, so the job's
    own scoped key signs it where there is one. Signing calls nobody."""
    access, secret = keys or (s3.access_key, s3.secret_key)
    signer = Minio(s3.endpoint, access_key=access, secret_key=secret, secure=s3.secure, region=s3.region)
    return str(signer.presigned_get_object(s3.bucket, key, expires=expires))


def cache_dir(root: str, tenant_id: str) -> str:
    """The tenant's own Hugging Face cache for its jobs (``HF_HOME``)."""
    return str(Path(root).expanduser() / tenant_id / "huggingface")


# --- S3 identities scoped to one run ---


def iam_user(run_id: str) -> str:
    return f"job-{run_id}"


def job_policy(bucket: str, prefix: str, inputs: list[str]) -> dict[str, Any]:
    """Read ``inputs`` (an input ending in ``/`` is a folder: read and list what is under it); read, write, list
    and delete under ``prefix``/. The statement allowing ``ListBucket``
    with no ``s3:prefix`` is what a HeadBucket needs (pyarrow checks the bucket before creating a
    directory); SeaweedFS gives every listing an ``s3:prefix``, so it lists nothing."""
    arn = f"arn:aws:s3:::{bucket}"
    keys = [f"{arn}/{key}*" if key.endswith("/") else f"{arn}/{key}" for key in inputs]
    listed = [f"{prefix}/*", *(f"{key}*" for key in inputs if key.endswith("/"))]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
             "Resource": [f"{arn}/{prefix}/*"]},
            {"Effect": "Allow", "Action": ["s3:GetObject"],
             "Resource": [f"{arn}/{prefix}", *keys]},
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [arn],
             "Condition": {"StringLike": {"s3:prefix": listed}}},
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [arn],
             "Condition": {"Null": {"s3:prefix": "true"}}},
        ],
    }  # fmt: skip


class IamUnavailable(Unavailable):
    """The object store has no writable IAM API."""


class ObjectIam:
    """The object store's IAM API (AWS IAM's query protocol on the S3 port, SigV4-signed with the trainer's key)."""

    def __init__(self, s3: S3Settings) -> None:
        self.s3 = s3
        self.url = f"{'https' if s3.secure else 'http'}://{s3.endpoint}/"
        self._http = urllib3.PoolManager(timeout=IAM_TIMEOUT, retries=False)

    def _call(self, action: str, **params: str) -> tuple[int, str]:
        body = urllib.parse.urlencode({"Action": action, "Version": IAM_VERSION, **params}).encode()
        url = urllib.parse.urlsplit(self.url)
        date = datetime.now(UTC)
        content_sha = sha256_hash(body)
        headers: dict[str, Any] = {
            "Content-Type": "application/x-www-form-urlencoded", "Host": url.netloc,
            "X-Amz-Date": date.strftime("%Y%m%dT%H%M%SZ"), "x-amz-content-sha256": content_sha,
        }  # fmt: skip
        credentials = Credentials(self.s3.access_key, self.s3.secret_key)
        signed = sign_v4_s3(
            method="POST", url=url, region=self.s3.region, headers=headers, credentials=credentials,
            content_sha256=content_sha, date=date,
        )  # fmt: skip
        try:
            response = self._http.request("POST", self.url, body=body, headers={k: str(v) for k, v in signed.items()})
        except urllib3.exceptions.HTTPError as err:
            raise Unavailable(f"the object store's IAM API is unreachable ({type(err).__name__})") from None
        return response.status, response.data.decode("utf-8", "replace")

    def _ok(self, action: str, **params: str) -> str:
        status, text = self._call(action, **params)
        if status == 200:
            return text
        code = _xml(text, "Code") or str(status)
        if status in (403, 404, 405, 501) and code in ("AccessDenied", "NotImplemented", "MethodNotAllowed", "404",
                                                       "405", "501"):  # fmt: skip
            raise IamUnavailable(
                f"the object store refuses IAM {action} ({code}: {_xml(text, 'Message')}); for scoped job keys "
                "SeaweedFS needs -s3.iam.readOnly=false"
            )
        raise Unavailable(f"the object store's IAM {action} failed ({status} {code}: {_xml(text, 'Message')})")

    def available(self) -> bool:
        """Whether this store lets the trainer make and delete users (tries: a user made and deleted)."""
        probe = f"job-probe-{secrets.token_hex(4)}"
        try:
            self._ok("CreateUser", UserName=probe)
        except IamUnavailable:
            return False
        self.revoke(probe)
        return True

    def grant(self, user: str, prefix: str, inputs: list[str]) -> tuple[str, str]:
        """A fresh user ``user`` (an earlier one of that name is deleted first) with ``job_policy``; its keys."""
        self.revoke(user)
        self._ok("CreateUser", UserName=user)
        text = self._ok("CreateAccessKey", UserName=user)
        access, secret = _xml(text, "AccessKeyId"), _xml(text, "SecretAccessKey")
        if not access or not secret:
            raise Unavailable("the object store's IAM CreateAccessKey answered no key")
        policy = json.dumps(job_policy(self.s3.bucket, prefix, inputs))
        self._ok("PutUserPolicy", UserName=user, PolicyName="run", PolicyDocument=policy)
        return access, secret

    def revoke(self, user: str) -> None:
        """Delete the user and its keys; nothing when there is none."""
        status, text = self._call("DeleteUser", UserName=user)
        if status != 200 and _xml(text, "Code") != "NoSuchEntity":
            raise Unavailable(f"the object store's IAM DeleteUser failed ({status} {_xml(text, 'Code')})")


def _xml(text: str, tag: str) -> str:
    found = re.search(f"<{tag}>(.*?)</{tag}>", text, re.S)
    return found.group(1) if found else ""


@dataclass
class JobAccess:
    """The trainer's side: what each submission hands its job, and taking it back."""

    store: ObjectStore
    s3: S3Settings
    mode: str = "auto"
    token_lifetime_s: float = 48 * 3600.0
    secrets_url_s: float = 600.0
    cache_root: str = "~/.cache/distillery/jobs"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidArgument(f"DISTILLERY_JOB_S3_ACCESS={self.mode!r} must be one of {', '.join(MODES)}")
        self.iam = ObjectIam(self.s3)
        self._scoped: bool | None = {"scoped": True, "shared": False}.get(self.mode)

    def scoped(self) -> bool:
        """Whether jobs get scoped keys (``auto``: asked of the store once)."""
        if self._scoped is None:
            self._scoped = self.iam.available()
            if not self._scoped:
                log.warning(
                    "the object store has no writable IAM API: training jobs get the trainer's bucket-wide S3 key "
                    "(never in their environment). Enable it (SeaweedFS: -s3.iam.readOnly=false) or set "
                    "DISTILLERY_JOB_S3_ACCESS=scoped to refuse training without scoped keys"
                )
        return self._scoped

    def issue(self, run: runs.Run, prefix: str, inputs: list[str]) -> tuple[JobSecrets, str]:
        """The job's secrets (scoped keys when ``scoped``), written to ``<prefix>/job-secrets.json``, and the
        presigned URL the job reads them with. Blocking: call it in a thread."""
        if self.scoped():
            access, secret = self.iam.grant(iam_user(run.id), prefix, inputs)
        else:
            access, secret = self.s3.access_key, self.s3.secret_key
        job_secrets = JobSecrets(access, secret, new_push_token(self.token_lifetime_s))
        key = f"{prefix}/{SECRETS_NAME}"
        self.store.put_bytes(key, job_secrets.to_json(), "application/json")
        return job_secrets, presigned_get(self.s3, key, timedelta(seconds=self.secrets_url_s), (access, secret))

    def revoke(self, run: runs.Run, prefix: str) -> None:
        """Take the job's keys back (its run's job ended, or the run did). Blocking: call it in a thread."""
        self.store.delete_prefix(f"{prefix}/{SECRETS_NAME}")
        if self.scoped():
            self.iam.revoke(iam_user(run.id))
