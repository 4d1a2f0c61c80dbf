"""What every recipe's Ray job does around its training: the driver, Ray, storage, and the objects it writes.

A recipe module is run as ``python -m services.trainer.recipes.<name> --spec-key <key> --secrets-url <url>``;
its ``main`` is ``drive(argv, prog, fit)``, which:

0. reads the job's secrets (its run-scoped S3 keys and push token) through the presigned URL, deletes the
   secrets object, and keeps them in this process's environment only (``receive_secrets``; Ray never sees
   them: see ``services/trainer/job_access.py``); without ``--secrets-url`` they come from the environment;
1. reads the ``JobSpec`` (``job_spec.py``) at the key (exit 2 when there is none, 1 when it is not a spec);
2. skips a run that has its result.json already (a job submitted again after it finished);
3. clears error.json and phase.json of an earlier attempt, checks the student model (``check_student_model``)
   and calls the recipe's ``fit(spec, s3)``;
4. classifies whatever ``fit`` raised (``failures.classify``, in the phase the job recorded last with
   ``enter_phase``) into ``<output_prefix>/error.json`` and exits 1; a cancel (SIGINT) exits 130 with none.

``fit`` usually hands a loop to ``train_on_ray`` (a Ray Train ``TorchTrainer`` whose checkpoints go to
S3 under ``<output_prefix>/ray``); the loop runs its stages in ``attempt``, which writes a ``RunFailure``
(what another attempt cannot fix) to error.json itself and returns, so Ray Train does not retry it.

Environment: DISTILLERY_S3_* (``S3Settings.from_env``; the keys from the secrets object); RAY_ADDRESS under
the Jobs API (without it a local Ray cluster is started). ``train_on_ray`` hands the secrets to its workers in
``train_loop_config``; ``worker_spec`` puts them in the worker's environment.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3
from minio.error import S3Error

from services.common.errors import InvalidArgument, NotFound
from services.common.objects import ObjectStore
from services.common.settings import S3Settings
from services.trainer.recipes import failures
from services.trainer.recipes.failures import RunFailure
from services.trainer.recipes.job_spec import SECRETS_NAME, JobSpec

log = logging.getLogger("distillery.recipes.job")

LOCAL_OBJECT_STORE_BYTES = 200 * 1024 * 1024
# Where each field of the secrets object goes in the job's processes (what S3Settings and ProgressPush read).
SECRET_ENV = {
    "s3_access_key": "DISTILLERY_S3_ACCESS_KEY",
    "s3_secret_key": "DISTILLERY_S3_SECRET_KEY",
    "push_token": "DISTILLERY_RUN_TOKEN",
}


# --- the driver ---


def drive(
    argv: list[str] | None, prog: str, fit: Callable[[JobSpec, S3Settings], None], *, chat_model: bool = True
) -> int:
    """A recipe's Ray job from its command line to its exit code (module docstring); ``chat_model``: the student
    must have a chat template (a speech model has none)."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--spec-key", required=True, help="S3 key of the run's spec.json")
    parser.add_argument("--secrets-url", default="", help="presigned URL of the job's secrets object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.secrets_url and not receive_secrets(args.secrets_url):
        return 2
    s3 = S3Settings.from_env()
    store = ObjectStore(s3)
    if args.secrets_url:  # read once: the URL in Ray's logs reads nothing from now on
        store.delete_prefix(f"{args.spec_key.rpartition('/')[0]}/{SECRETS_NAME}")
    return run_job(store, args.spec_key, lambda spec: fit(spec, s3), chat_model=chat_model)


def receive_secrets(url: str) -> bool:
    """Read the job's secrets object into this process's environment; False (logged) when it cannot be read.
    Never logs the URL or what it read."""
    try:
        response = urllib3.request(
            "GET", url, timeout=urllib3.Timeout(connect=5.0, read=30.0), retries=urllib3.Retry(3, backoff_factor=0.5)
        )
    except urllib3.exceptions.HTTPError as err:
        log.error("cannot read the job's secrets (%s): is the object store reachable?", type(err).__name__)
        return False
    if response.status != 200:
        log.error("cannot read the job's secrets (HTTP %s): its URL expired or it was read already; the trainer "
                  "submits a lost job again with new ones", response.status)  # fmt: skip
        return False
    try:
        values = json.loads(response.data)
    except ValueError:
        log.error("the job's secrets object is not JSON")
        return False
    for name, variable in SECRET_ENV.items():
        if isinstance(values.get(name), str) and values[name]:
            os.environ[variable] = values[name]
    return True


def secrets_for_workers() -> dict[str, str]:
    """The job's secrets as this process holds them, for its workers' ``train_loop_config``."""
    return {variable: os.environ[variable] for variable in SECRET_ENV.values() if os.environ.get(variable)}


def run_job(store: ObjectStore, spec_key: str, fit: Callable[[JobSpec], None], *, chat_model: bool = True) -> int:
    """Steps 1-4 of the module docstring against ``store``; the exit code."""
    raw = read_json(store, spec_key)
    if raw is None:
        log.error("no spec at s3://%s/%s", store.bucket, spec_key)
        return 2
    try:
        spec = JobSpec.from_dict(raw)
    except InvalidArgument as err:
        log.error("the object at %s is not a job spec: %s", spec_key, err.message)
        prefix = raw.get("output_prefix")
        if isinstance(prefix, str) and prefix:
            failure = RunFailure(failures.TRAINING_FAILED, f"the training job's spec is not valid: {err.message}")
            write_json(store, f"{prefix}/error.json", failure.to_dict())
        return 1
    prefix = spec.output_prefix
    if read_json(store, f"{prefix}/result.json") is not None:
        log.info("run %s already has its result; nothing to do", spec.run_id)
        return 0
    store.delete_prefix(f"{prefix}/error.json")  # from an earlier attempt
    store.delete_prefix(f"{prefix}/phase.json")
    try:
        if spec.start_kind != "full_weights":  # full weights carry their own config and tokenizer
            (check_student_model if chat_model else check_model_loads)(spec.student_model)
        fit(spec)
    except KeyboardInterrupt:
        log.info("cancelled")
        return 130
    except Exception as err:
        failure = failures.classify(err, current_phase(store, spec))
        log.exception("run %s failed: %s: %s", spec.run_id, failure.code, failure.message)
        write_json(store, f"{prefix}/error.json", failure.to_dict())
        return 1
    if read_json(store, f"{prefix}/result.json") is not None:
        log.info("run %s done", spec.run_id)
        return 0
    error = read_json(store, f"{prefix}/error.json")
    if error is not None:
        log.error("run %s failed: %s: %s", spec.run_id, error.get("code"), error.get("message"))
    else:
        log.error("run %s stopped before the end (cancelled, or the trainer said it is final)", spec.run_id)
    return 1


def check_student_model(student_model: str) -> None:
    """Fail before starting any worker when the student cannot be loaded or has no chat template."""
    if not check_model_loads(student_model).chat_template:
        raise RunFailure(
            failures.UNKNOWN_MODEL,
            f"the student model {student_model!r} has no chat template: pick a chat (instruct) model",
            "student_model",
        )


def check_model_loads(student_model: str) -> Any:
    """The student's tokenizer; an ``unknown_model`` failure when its config or tokenizer cannot be loaded."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(student_model)
        return AutoTokenizer.from_pretrained(student_model)
    except Exception as err:
        raise failures.unknown_model(student_model, err) from err


# --- the phase a job is in (what a failure's advice is about) ---


def enter_phase(store: ObjectStore, spec: JobSpec, phase: str) -> None:
    """Record that the job now runs ``phase`` (``failures.SFT`` or ``failures.GRPO``): a failure from here on,
    even a worker killed for memory, is classified with that phase's settings. A job that records none is SFT."""
    assert phase in failures.PHASES, phase
    write_json(store, f"{spec.output_prefix}/phase.json", {"phase": phase})


def current_phase(store: ObjectStore, spec: JobSpec) -> str:
    """The phase the job recorded last (``failures.SFT`` when none, or when it cannot be read)."""
    try:
        recorded = read_json(store, f"{spec.output_prefix}/phase.json") or {}
    except (S3Error, ValueError):
        return failures.SFT
    phase = recorded.get("phase")
    return phase if phase in failures.PHASES else failures.SFT


# --- Ray ---


def train_on_ray(
    loop: Callable[[dict[str, Any]], None], spec: JobSpec, s3: S3Settings, *, workers: int, max_failures: int,
    checkpoints_kept: int | None = None,
) -> None:  # fmt: skip
    """Run ``loop`` on ``workers`` Ray Train workers (``train_loop_config``: ``{"spec": spec.to_json(), "secrets":
    ...}``, read it with ``worker_spec``), checkpoints in S3 under ``<output_prefix>/ray``; an attempt that raises is
    tried again ``max_failures`` times from the last checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    start_ray()
    trainer = TorchTrainer(
        loop,
        train_loop_config={"spec": spec.to_json(), "secrets": secrets_for_workers()},
        scaling_config=scaling(spec, workers),
        run_config=RunConfig(
            name=spec.run_id, storage_path=f"{s3.bucket}/{spec.output_prefix}/ray",
            storage_filesystem=checkpoint_storage(s3), failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=checkpoints_kept),
        ),
    )  # fmt: skip
    trainer.fit()


def worker_spec(config: dict[str, Any]) -> JobSpec:
    """The spec a Ray Train worker was given by ``train_on_ray``; the job's secrets it was given go in this worker's
    environment (where ``S3Settings.from_env`` and ``ProgressPush.from_env`` read them)."""
    os.environ.update(config.get("secrets") or {})
    return JobSpec.from_json(config["spec"])


def resumable_worker(config: dict[str, Any], train: Callable[..., Any]) -> None:
    """One Ray Train worker of a recipe that resumes from the run's last checkpoint (speech, OCR):
    ``train(spec, store, rank, workdir, resume=<the checkpoint's trainer state dir or None>, ray_train=True)``
    in a scratch directory, its failures handled by ``attempt``."""
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback

    spec = worker_spec(config)
    rank = ray.train.get_context().get_world_rank()
    store = ObjectStore(S3Settings.from_env())

    def stages(workdir: Path) -> None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            train(spec, store, rank, workdir, resume=None, ray_train=True)
            return
        with checkpoint.as_directory() as directory:
            resume = os.path.join(directory, RayTrainReportCallback.CHECKPOINT_NAME)
            train(spec, store, rank, workdir, resume=resume, ray_train=True)

    attempt(spec, store, stages, rank)


def start_ray() -> None:
    """Join the job's Ray cluster (RAY_ADDRESS under the Jobs API), else start a local one."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:  # a local cluster, for tests and direct runs
        ray.init(address="local", object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False)


def scaling(spec: JobSpec, workers: int) -> Any:
    """The workers a job asks Ray for: the run's compute (``spec.cpus_per_worker``, ``gpus_per_worker``,
    ``gpu_type``, recorded from a worker group of the deployment: ``services/trainer/worker_groups.py``).
    A GPU worker asks for its GPUs (one when the spec says 0), on nodes of ``gpu_type`` when it names one.
    A CPU worker asks for its CPUs; where the run records none, for the CPUs of the largest node shared among
    its workers (so two CPU jobs on one node take turns rather than share it). Ray sets a worker's torch
    threads to its whole CPUs (at least one)."""
    import ray
    from ray.train import ScalingConfig

    if spec.use_gpu:
        resources: dict[str, float] = {"GPU": spec.gpus_per_worker or 1}
        if spec.cpus_per_worker:
            resources["CPU"] = spec.cpus_per_worker
        return ScalingConfig(num_workers=workers, use_gpu=True, resources_per_worker=resources,
                             accelerator_type=spec.gpu_type or None)  # fmt: skip
    cpus = spec.cpus_per_worker
    if not cpus:
        node_cpus = max((int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"]), default=1)
        cpus = max(1, node_cpus // workers)
    return ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus})


def checkpoint_storage(s3: S3Settings) -> Any:
    """The S3 filesystem Ray Train keeps a run's checkpoints in. It looks before it makes a directory: keys scoped
    to the run may not write the directory markers of ``tenants/`` and the like."""
    import pyarrow.fs

    return pyarrow.fs.S3FileSystem(
        endpoint_override=s3.endpoint, scheme="https" if s3.secure else "http",
        access_key=s3.access_key, secret_key=s3.secret_key, region=s3.region,
        check_directory_existence_before_creation=True,
    )  # fmt: skip


# --- one attempt of a worker ---


def attempt(spec: JobSpec, store: ObjectStore, stages: Callable[[Path], None], rank: int = 0) -> None:
    """``stages(workdir)`` in a scratch directory (removed after). A ``RunFailure`` (what another attempt cannot
    fix: the dataset, a diverged loss) goes to error.json from rank 0 and ends the attempt without raising."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{spec.run_id}-rank{rank}-"))
    try:
        stages(workdir)
    except RunFailure as failure:
        log.error("run %s failed: %s: %s", spec.run_id, failure.code, failure.message)
        if rank == 0:
            write_json(store, f"{spec.output_prefix}/error.json", failure.to_dict())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- objects in the store ---


def read_json(store: ObjectStore, key: str) -> dict[str, Any] | None:
    """The JSON object at ``key``, or None when there is none."""
    try:
        data = store.get_bytes(key)
    except NotFound:
        return None
    except S3Error as err:
        if err.code in ("NoSuchKey", "NoSuchBucket"):
            return None
        raise
    value = json.loads(data)
    return value if isinstance(value, dict) else None


def write_json(store: ObjectStore, key: str, value: dict[str, Any]) -> None:
    store.put_bytes(key, json.dumps(value, indent=2).encode(), "application/json")


def upload_dir(store: ObjectStore, directory: Path, prefix: str) -> None:
    """Every file under ``directory`` to ``<prefix>/<its relative path>``."""
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        store.client.fput_object(store.bucket, f"{prefix}/{path.relative_to(directory).as_posix()}", str(path))
