"""The trainer service's settings, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidArgument
from services.common.settings import (
    S3Settings,
    ServerSettings,
    database_url,
    env_bool,
    env_float,
    env_str,
    registry_address,
)
from services.trainer import worker_groups
from services.trainer.students import StudentSources
from services.trainer.worker_groups import WorkerGroup


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    database_url: str
    s3: S3Settings
    registry_address: str
    ingest_address: str
    teacher_address: str
    # The Ray head's dashboard URL, for the Ray Jobs API (e.g. http://127.0.0.1:8265).
    ray_address: str
    # A file holding the Ray head's auth token ("" when the cluster has token auth off).
    ray_token_file: str = ""
    # Ray Train workers per run, and whether each takes a GPU: the one worker group of a deployment that
    # declares none (``worker_groups``).
    train_workers: int = 1
    train_use_gpu: bool = False
    # The kinds of Ray worker the deployment's cluster offers training jobs (DISTILLERY_WORKER_GROUPS, a JSON
    # list; services/trainer/worker_groups.py); () = one group from train_workers and train_use_gpu.
    worker_groups: tuple[WorkerGroup, ...] = ()
    # Where training jobs reach this service to push progress; "" = the address it listens on.
    push_address: str = ""
    # A run's driver renews its lease this often (s); another instance takes over after 3 misses.
    lease_s: float = 5.0
    # What S3 access a training job gets (services/trainer/job_access.py): "scoped" keys for its run only,
    # the trainer's "shared" key, or "auto" (scoped when the object store's IAM API allows it).
    job_s3_access: str = "auto"
    # How long a job's push token holds (s); a job submitted again gets a new one.
    run_token_lifetime_s: float = 48 * 3600.0
    # How long the presigned URL on a job's command line reads its secrets object (s).
    job_secrets_url_s: float = 600.0
    # Under it each tenant's jobs have their own Hugging Face cache (<dir>/<tenant>/huggingface).
    job_cache_dir: str = "~/.cache/distillery/jobs"
    # Where a run's student model may come from (``CreateRunRequest.student_model``): hub ids (org/name)
    # when ``allow_hub_models``, and directories under ``model_roots`` (absolute, symlinks resolved).
    allow_hub_models: bool = True
    model_roots: tuple[str, ...] = ()
    # An operator's recipes file (TOML, docs/recipes.md): its recipes are added to the platform's
    # (services/trainer/run_recipes.toml), or replace those of the same name; "" = the platform's only.
    recipes_file: str = ""

    def __repr__(self) -> str:
        return f"Settings(server={self.server!r}, s3={self.s3!r}, ray_address={self.ray_address!r})"

    def students(self) -> StudentSources:
        return StudentSources(self.allow_hub_models, self.model_roots)

    def ray_token(self) -> str:
        if not self.ray_token_file:
            return ""
        try:
            return Path(self.ray_token_file).read_text().strip()
        except OSError as err:
            raise InvalidArgument(f"DISTILLERY_RAY_TOKEN_FILE={self.ray_token_file}: cannot read it ({err})") from None

    @classmethod
    def from_env(cls) -> Settings:
        workers = env_str("DISTILLERY_TRAIN_WORKERS", "1")
        if not workers.isdigit() or int(workers) < 1:
            raise InvalidArgument(f"DISTILLERY_TRAIN_WORKERS={workers!r} must be a whole number >= 1")
        return cls(
            server=ServerSettings.from_env(),
            database_url=database_url(),
            s3=S3Settings.from_env(),
            registry_address=registry_address(),
            ingest_address=env_str("DISTILLERY_INGEST_ADDRESS"),
            teacher_address=env_str("DISTILLERY_TEACHER_ADDRESS"),
            ray_address=env_str("DISTILLERY_RAY_ADDRESS", ""),
            ray_token_file=env_str("DISTILLERY_RAY_TOKEN_FILE", ""),
            train_workers=int(workers),
            train_use_gpu=env_bool("DISTILLERY_TRAIN_USE_GPU", False),
            worker_groups=worker_groups.parse(env_str(worker_groups.VARIABLE, "")),
            push_address=env_str("DISTILLERY_TRAINER_PUSH_ADDRESS", ""),
            lease_s=env_float("DISTILLERY_RUN_LEASE_S", 5.0),
            job_s3_access=env_str("DISTILLERY_JOB_S3_ACCESS", cls.job_s3_access),
            run_token_lifetime_s=env_float("DISTILLERY_RUN_TOKEN_LIFETIME_S", cls.run_token_lifetime_s),
            job_secrets_url_s=env_float("DISTILLERY_JOB_SECRETS_URL_S", cls.job_secrets_url_s),
            job_cache_dir=env_str("DISTILLERY_JOB_CACHE_DIR", cls.job_cache_dir),
            allow_hub_models=env_bool("DISTILLERY_ALLOW_HUB_MODELS", True),
            model_roots=model_roots(env_str("DISTILLERY_MODEL_ROOTS", "")),
            recipes_file=env_str("DISTILLERY_RECIPES_FILE", ""),
        )


def model_roots(value: str) -> tuple[str, ...]:
    """DISTILLERY_MODEL_ROOTS: absolute directories, colon-separated; each as its real path."""
    roots = []
    for root in filter(None, (part.strip() for part in value.split(":"))):
        if not os.path.isabs(root):
            raise InvalidArgument(f"DISTILLERY_MODEL_ROOTS: {root!r} is not an absolute path")
        roots.append(os.path.realpath(root))
    return tuple(roots)
