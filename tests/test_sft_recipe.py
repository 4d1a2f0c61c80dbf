"""The SFT recipe: settings, failure codes, the progress push, and whole runs of
``python -m services.trainer.recipes.sft`` against a real S3 server and a local Ray cluster."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from distillery.stack import servers
from distillery.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from services.common.errors import InvalidArgument, NotFound
from services.common.objects import ObjectStore
from services.common.settings import S3Settings
from services.trainer.recipes import evals, failures, job
from services.trainer.recipes.grpo_settings import GrpoSettings
from services.trainer.recipes.job_spec import JobSpec
from services.trainer.recipes.progress import ProgressPush
from services.trainer.recipes.sft import load_split, prompt_completion
from services.trainer.recipes.sft_settings import SftSettings, resolve_sft
from services.trainer.recipes.watch import Watch
from tests.tiny_models import build_llama

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"red": "rouge", "blue": "bleu", "green": "vert", "white": "blanc", "black": "noir"}
TEMPLATES = [
    "Translate the colour to French: {}", "French for {}?", "What is {} in French?", "{} in French",
    "Say {} in French.", "Give the French word for {}.", "Colour: {}. French:", "Translate: {}",
    "How do you say {} in French?", "French translation of {}, please.",
]  # fmt: skip
JOB_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_JOB_STOP_SIGNAL": "SIGINT",
}


def colour_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """40 train and 8 eval rows of one fixed mapping, no row on both sides."""
    rows = []
    for i, template in enumerate(TEMPLATES):
        for j, (colour, french) in enumerate(COLOURS.items()):
            messages = [{"role": "user", "content": template.format(colour)}, {"role": "assistant", "content": french}]
            if (i + j) % 2:
                messages.insert(0, {"role": "system", "content": "You translate colours to French."})
            rows.append({"messages": messages})
    eval_rows = rows[3::6][:8]
    return [r for r in rows if r not in eval_rows][:40], eval_rows


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama(tmp_path_factory.mktemp("student") / "llama")


@pytest.fixture(scope="module")
def store(s3_settings: S3Settings) -> ObjectStore:
    store = ObjectStore(s3_settings)
    store.ensure_bucket()
    return store


# --- settings ---


def test_resolve_sft_fills_defaults_and_checks_values() -> None:
    assert resolve_sft({}) == SftSettings(learning_rate=2e-4)
    assert resolve_sft({"full_finetune": True}).learning_rate == 2e-5
    settings = resolve_sft({"epochs": 0, "learning_rate": 0.0, "seed": "7", "max_steps": 30, "lora_dropout": 0.1})
    assert (settings.epochs, settings.learning_rate, settings.seed, settings.max_steps) == (3, 2e-4, 7, 30)
    assert SftSettings(**json.loads(json.dumps(settings.__dict__))) == settings  # the spec round-trips
    bad = [
        ({"learning_rate": 2.0}, "sft.learning_rate"), ({"learning_rate": -1e-4}, "sft.learning_rate"),
        ({"batch_size": -1}, "sft.batch_size"), ({"lora_dropout": 1.0}, "sft.lora_dropout"),
        ({"early_stopping_patience": 2, "eval_every_steps": -1}, "sft.eval_every_steps"),
        ({"max_steps": -5}, "sft.max_steps"), ({"eval_every_steps": -2}, "sft.eval_every_steps"),
        ({"early_stopping_patience": -3}, "sft.early_stopping_patience"),
        ({"seed": "x"}, "sft.seed"), ({"warmup": 3}, "sft.warmup"),
    ]  # fmt: skip
    for request, field in bad:
        with pytest.raises(InvalidArgument) as info:
            resolve_sft(request)
        assert info.value.field == field, request
    assert resolve_sft({"eval_every_steps": 10, "early_stopping_patience": 2}).checkpoint_every_steps == 50
    off = resolve_sft({"eval_every_steps": -1, "early_stopping_patience": -1})  # -1 is "off", kept as given
    assert (off.eval_every_steps, off.early_stopping_patience) == (-1, -1)


def test_evals_are_on_by_default_about_ten_a_run_with_patience() -> None:
    settings = resolve_sft({"max_steps": 95})
    every = evals.cadence(settings, evals.planned_steps(settings, rows=1000))
    assert every == 10 and evals.patience(settings, every) == evals.DEFAULT_PATIENCE
    by_rows = resolve_sft({"epochs": 2, "batch_size": 4, "gradient_accumulation_steps": 2})
    assert evals.planned_steps(by_rows, rows=41) == 2 * 6  # ceil(ceil(41 / 4) / 2) = 6 steps an epoch
    assert evals.cadence(resolve_sft({"eval_every_steps": 7}), 1000) == 7
    off = resolve_sft({"eval_every_steps": -1})
    assert evals.cadence(off, 1000) == 0 and evals.patience(off, 0) == 0
    assert evals.patience(resolve_sft({"early_stopping_patience": -1}), 10) == 0
    assert evals.ending(40, 95, settings, stopped_early=True) == {"reason": "early_stop", "step": 40}
    assert evals.ending(95, 95, settings, stopped_early=False) == {"reason": "max_steps", "step": 95}
    assert evals.ending(12, 12, by_rows, stopped_early=True)["reason"] == "epochs"  # stopped at the last step


# --- failure codes, from real exception objects ---


def test_classify_failures_as_ray_train_raises_them() -> None:
    from ray.exceptions import ActorDiedError, OutOfMemoryError, RayTaskError
    from ray.train import ControllerError, WorkerGroupError

    # Measured with Ray 2.60: TorchTrainer.fit() raises WorkerGroupError whose worker_failures map each
    # failed rank to the exception its loop raised, unpickled (the traceback only in the message).
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    wrapped = WorkerGroupError("[Rank 0 Error Snippet]:\nTraceback ...\ntorch.OutOfMemoryError: ...", {0: oom})
    assert failures.classify(wrapped).code == "out_of_memory"
    assert "sft.batch_size" in failures.classify(wrapped).message
    ray_oom = OutOfMemoryError("Task was killed due to the node running low on memory.\nMemory on the node ...")
    for err in (MemoryError(), ray_oom, RuntimeError("DefaultCPUAllocator: can't allocate memory: 8 GB")):
        assert failures.classify(WorkerGroupError("x", {1: err})).code == "out_of_memory", err
    killed = ActorDiedError()  # died for an unknown reason: Ray's text mentions the OOM killer, yet no OOM
    assert failures.classify(WorkerGroupError("x", {0: killed})).code == "training_failed"

    bug = WorkerGroupError("x", {0: ValueError("first line\nthe last line")})
    failure = failures.classify(bug)
    assert (failure.code, failure.field) == ("training_failed", "")
    assert failure.message == "training failed: ValueError: the last line"
    task = RayTaskError("loop", "Traceback ...", KeyError("labels"))
    assert "KeyError" in failures.classify(ControllerError(task)).message

    try:  # a failure the recipe raised itself, under another exception
        try:
            raise failures.diverged(12, math.nan)
        except failures.RunFailure as err:
            raise RuntimeError("while saving") from err
    except RuntimeError as err:
        failure = failures.classify(err)
    assert (failure.code, failure.field) == ("training_diverged", "sft.learning_rate")
    assert "Lower sft.learning_rate" in failure.message


def test_out_of_memory_names_the_settings_of_the_phase_that_ran() -> None:
    """An OOM during SFT names the SFT settings; during GRPO, the GRPO ones (never sft.batch_size)."""
    oom = MemoryError("DefaultCPUAllocator: can't allocate memory: 8 GB")
    sft = failures.classify(oom, failures.SFT)
    assert (sft.code, sft.field) == ("out_of_memory", "sft.batch_size")
    assert "lower sft.batch_size or sft.max_seq_length" in sft.message and "grpo." not in sft.message
    assert failures.classify(oom).to_dict() == sft.to_dict()  # a job that records no phase is SFT
    grpo = failures.classify(oom, failures.GRPO)
    assert (grpo.code, grpo.field) == ("out_of_memory", "grpo.prompts_per_step")
    for setting in ("grpo.prompts_per_step", "grpo.num_generations", "grpo.max_completion_length"):
        assert setting in grpo.message
    assert "sft.batch_size" not in grpo.message and "can't allocate memory: 8 GB" in grpo.message
    assert grpo.message.startswith("GRPO ran out of memory")


class FakeStore:
    """The part of ObjectStore a job's driver uses, in memory."""

    bucket = "fake"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def get_bytes(self, key: str) -> bytes:
        if key not in self.objects:
            raise NotFound(key)
        return self.objects[key]

    def put_bytes(self, key: str, data: bytes, content_type: str = "") -> None:
        self.objects[key] = data

    def delete_prefix(self, prefix: str) -> None:
        for key in [k for k in self.objects if k.startswith(prefix)]:
            del self.objects[key]


def a_spec(**changes: Any) -> JobSpec:
    values: dict[str, Any] = {
        "run_id": "run_x", "tenant_id": "ten_x", "student_model": "some/model", "train_key": "t/train.jsonl",
        "eval_key": "t/eval.jsonl", "output_prefix": "tenants/ten_x/runs/run_x", "sft": resolve_sft({}),
        "grpo": GrpoSettings(), "num_workers": 1, "use_gpu": False,
    }  # fmt: skip
    return JobSpec(**{**values, **changes})


@pytest.mark.parametrize(("phase", "field"), [(None, "sft.batch_size"), ("grpo", "grpo.prompts_per_step")])
def test_the_driver_classifies_a_memory_kill_in_the_phase_the_job_recorded(
    monkeypatch: pytest.MonkeyPatch, phase: str | None, field: str
) -> None:
    """As a job runs: the worker records the phase in the store, then dies of memory; the driver (no Ray here)
    writes error.json naming that phase's settings."""
    store, spec = FakeStore(), a_spec()
    store.put_bytes(f"{spec.output_prefix}/spec.json", spec.to_json().encode())
    store.put_bytes(f"{spec.output_prefix}/phase.json", b'{"phase": "grpo"}')  # an earlier attempt's: cleared
    monkeypatch.setattr(job, "check_student_model", lambda name: None)

    def fit(spec: JobSpec) -> None:
        if phase is not None:
            job.enter_phase(store, spec, phase)  # type: ignore[arg-type]
        raise MemoryError("Task was killed due to the node running low on memory.")

    assert job.run_job(store, f"{spec.output_prefix}/spec.json", fit) == 1  # type: ignore[arg-type]
    error = json.loads(store.objects[f"{spec.output_prefix}/error.json"])
    assert (error["code"], error["field"]) == ("out_of_memory", field)


def test_the_job_spec_round_trips_and_refuses_what_a_recipe_cannot_use() -> None:
    spec = a_spec()
    assert JobSpec.from_json(spec.to_json()) == spec
    data = json.loads(spec.to_json())
    assert data["sft"]["learning_rate"] == 2e-4 and data["grpo"]["num_generations"] == 4
    sft_only = a_spec(grpo=None)
    assert JobSpec.from_json(sft_only.to_json()).grpo is None and json.loads(sft_only.to_json())["grpo"] is None
    bad = [
        ({**data, "extra": 1}, "spec.extra", "different versions"), ({"run_id": "r"}, "spec.tenant_id", "lacks"),
        ({**data, "num_workers": 0}, "spec.num_workers", "DISTILLERY_TRAIN_WORKERS"),
        ({**data, "student_model": " "}, "spec.student_model", "non-empty"),
        ({**data, "sft": {**data["sft"], "batch_size": -1}}, "sft.batch_size", "at least 1"),
        ({**data, "grpo": {**data["grpo"], "warmup": 1}}, "spec.grpo.warmup", "GrpoSettings does not"),
    ]  # fmt: skip
    for value, field, words in bad:
        with pytest.raises(InvalidArgument) as info:
            JobSpec.from_dict(value)
        assert info.value.field == field and words in info.value.message, (value, info.value.message)
    with pytest.raises(InvalidArgument) as info:
        JobSpec(**{**dataclasses.asdict(spec), "grpo": None})  # settings as dicts: not a JobSpec
    assert info.value.field == "spec.sft"


def test_a_non_finite_loss_stops_training() -> None:
    from transformers import TrainerControl, TrainerState

    watch, state, control = Watch(), TrainerState(global_step=7), TrainerControl()
    watch.on_log(None, state, control, logs={"loss": 2.5})
    assert watch.diverged is None and not control.should_training_stop
    watch.check()
    watch.on_log(None, state, control, logs={"loss": math.inf})
    assert watch.diverged == (7, math.inf) and control.should_training_stop
    with pytest.raises(failures.RunFailure) as info:
        watch.check()
    assert (info.value.code, info.value.field) == ("training_diverged", "sft.learning_rate")
    grpo = Watch(failures.GRPO)
    grpo.on_log(None, state, TrainerControl(), logs={"loss": math.nan})
    with pytest.raises(failures.RunFailure) as info:
        grpo.check()
    assert (info.value.code, info.value.field) == ("training_diverged", "grpo.learning_rate")
    assert "lower grpo.learning_rate" in info.value.message


def test_rows_become_prompt_completion_and_long_rows_are_left_out(store: ObjectStore, student: Path) -> None:
    from transformers import AutoTokenizer

    row = prompt_completion(json.dumps(colour_rows()[0][1]), "line 2")
    assert [m["role"] for m in row["prompt"]] == ["system", "user"] and row["completion"][0]["content"] == "bleu"
    for bad in ("{", '{"messages": [{"role": "user", "content": "hi"}]}', '{"messages": [{"role": "user"}, 3]}'):
        with pytest.raises(failures.RunFailure) as info:
            prompt_completion(bad, "train split, line 7")
        assert (info.value.code, info.value.field) == ("invalid_dataset", "dataset_id")
        assert info.value.message.startswith("train split, line 7: ")

    tokenizer = AutoTokenizer.from_pretrained(student)
    store.put_bytes("tests/sft/rows.jsonl", jsonl(colour_rows()[0]))
    rows, too_long = load_split(store, "tests/sft/rows.jsonl", "train", tokenizer, 1024)
    assert (len(rows), too_long) == (40, 0)
    with pytest.raises(failures.RunFailure) as info:
        load_split(store, "tests/sft/rows.jsonl", "train", tokenizer, 8)
    assert info.value.code == "invalid_dataset" and "sft.max_seq_length=8" in info.value.message


# --- the progress push, against a real gRPC server ---


class Recorder(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, keep_going: bool = True) -> None:
        self.keep_going = keep_going
        self.requests: list[trainer_pb2.ReportRunEventsRequest] = []
        self.tokens: list[str] = []

    def ReportRunEvents(self, request: Any, context: Any) -> trainer_pb2.ReportRunEventsResponse:
        self.requests.append(request)
        self.tokens.append(dict(context.invocation_metadata()).get("authorization", ""))
        return trainer_pb2.ReportRunEventsResponse(keep_going=self.keep_going)

    @property
    def events(self) -> list[trainer_pb2.RunEvent]:
        return [e for r in self.requests for e in r.events]


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield recorder, f"127.0.0.1:{port}"
    server.stop(0)


def sft_trainer(student: Path, callback: ProgressPush, max_steps: int) -> Any:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    train, _ = colour_rows()
    rows = [prompt_completion(json.dumps(r), "") for r in train]
    config = SFTConfig(
        output_dir=str(student.parent / "out"), use_cpu=True, bf16=False, gradient_checkpointing=False,
        max_steps=max_steps, per_device_train_batch_size=2, logging_steps=1, report_to=[], save_strategy="no",
        disable_tqdm=True, learning_rate=1e-3, seed=0,
    )  # fmt: skip
    return SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(student), args=config, callbacks=[callback],
        processing_class=AutoTokenizer.from_pretrained(student), train_dataset=Dataset.from_list(rows),
    )  # fmt: skip


def test_progress_push_sends_ordered_events_with_the_token(recorder: tuple[Recorder, str], student: Path) -> None:
    server, address = recorder
    push = ProgressPush("run_abc", address, "tok-123", min_interval_s=0.0)
    sft_trainer(student, push, max_steps=6).train()
    push.close()
    assert server.tokens and set(server.tokens) == {"Bearer tok-123"}
    assert {r.run_id for r in server.requests} == {"run_abc"}
    progress = [e.progress for e in server.events if e.HasField("progress")]
    assert [p.step for p in progress] == [1, 2, 3, 4, 5, 6]
    assert progress[-1].total_steps == 6 and progress[-1].eta_seconds == 0 and progress[0].eta_seconds > 0
    metrics = [e.metrics for e in server.events if e.HasField("metrics")]
    assert [m.step for m in metrics][:6] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_second"} <= set(metrics[0].values)
    assert metrics[0].values["tokens_per_second"] > 0


def test_keep_going_false_stops_training(recorder: tuple[Recorder, str], student: Path) -> None:
    server, address = recorder
    server.keep_going = False
    push = ProgressPush("run_abc", address, "tok", min_interval_s=0.0)
    trainer = sft_trainer(student, push, max_steps=500)
    trainer.train()
    push.close()
    assert push.stopped_by_service and 0 < trainer.state.global_step < 100


def test_a_dead_trainer_address_does_not_slow_training(student: Path) -> None:
    with socket.socket() as silent:  # accepts connections and never answers: each send waits for its deadline
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        push = ProgressPush("run_abc", f"127.0.0.1:{silent.getsockname()[1]}", "tok", min_interval_s=0.0)
        spent: list[float] = []
        for hook in ("on_step_end", "on_log"):
            original = getattr(push, hook)

            def timed(*args: Any, _original: Any = original, **kwargs: Any) -> None:
                started = time.perf_counter()
                _original(*args, **kwargs)
                spent.append(time.perf_counter() - started)

            setattr(push, hook, timed)
        trainer = sft_trainer(student, push, max_steps=10)
        trainer.train()
        closing = time.monotonic()
        push.close(timeout_s=1.0)
        # close gives up on the silent trainer after its timeout instead of waiting on every queued send's
        # deadline (a 2 s deadline each): the bound is loose enough for a busy machine to keep.
        assert time.monotonic() - closing < 1.0 + push.timeout_s
    assert trainer.state.global_step == 10 and not push.stopped_by_service
    # The hooks only queue: all of them together take less than one send's deadline, which a hook that
    # waited for a send would spend alone (bench/bench_timing.py measures what a hook costs).
    assert len(spent) >= 20 and sum(spent) < push.timeout_s, spent

    full = ProgressPush("run_abc", f"127.0.0.1:{servers.free_port()}", "tok", max_queue=100)
    started = time.monotonic()
    for step in range(3000):  # a full queue drops its oldest events; putting never blocks
        full.put(trainer_pb2.RunEvent(progress=trainer_pb2.Progress(step=step)))
    assert time.monotonic() - started < 10.0  # thousands of times what 3000 appends take: a put never waits
    assert len(full._queue) <= 100 and full._queue[-1].progress.step == 2999
    full.close(timeout_s=1.0)


# --- whole runs of the recipe ---


def run_recipe(s3: S3Settings, spec_key: str, extra_env: dict[str, str] | None = None) -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DISTILLERY_"))}
    env.update(JOB_ENV)
    env.update({
        "DISTILLERY_S3_ENDPOINT": s3.endpoint, "DISTILLERY_S3_ACCESS_KEY": s3.access_key,
        "DISTILLERY_S3_SECRET_KEY": s3.secret_key, "DISTILLERY_S3_BUCKET": s3.bucket, "DISTILLERY_S3_SECURE": "false",
    })  # fmt: skip
    env.update(extra_env or {})
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "services.trainer.recipes.sft", "--spec-key", spec_key],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def put_spec(store: ObjectStore, run_id: str, student: str, sft: dict[str, Any]) -> tuple[str, str]:
    prefix = f"tenants/ten_test/runs/{run_id}"
    train, evals = colour_rows()
    store.put_bytes(f"tenants/ten_test/splits/{run_id}/train.jsonl", jsonl(train))
    store.put_bytes(f"tenants/ten_test/splits/{run_id}/eval.jsonl", jsonl(evals))
    spec = JobSpec(
        run_id=run_id, tenant_id="ten_test", student_model=student,
        train_key=f"tenants/ten_test/splits/{run_id}/train.jsonl",
        eval_key=f"tenants/ten_test/splits/{run_id}/eval.jsonl",
        output_prefix=prefix, sft=resolve_sft(sft), num_workers=1, use_gpu=False,
    )  # fmt: skip
    store.put_bytes(f"{prefix}/spec.json", spec.to_json().encode(), "application/json")
    return f"{prefix}/spec.json", prefix


def read(store: ObjectStore, key: str) -> Any:
    return json.loads(store.get_bytes(key))


def test_lora_run_trains_uploads_the_adapter_and_pushes_progress(
    store: ObjectStore, s3_settings: S3Settings, student: Path, recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    server, address = recorder
    sft = {"max_steps": 24, "learning_rate": 3e-3, "batch_size": 4, "checkpoint_every_steps": 12, "seed": 1}
    spec_key, prefix = put_spec(store, "run_lora", str(student), sft)
    env = {"DISTILLERY_TRAINER_ADDRESS": address, "DISTILLERY_RUN_TOKEN": "run-token"}
    code, output, elapsed = run_recipe(s3_settings, spec_key, env)
    print(f"LoRA run: submit to done {elapsed:.1f} s")
    assert code == 0, output[-6000:]

    result = read(store, f"{prefix}/result.json")
    metrics = result["metrics"]
    assert metrics["steps"] == 24 and metrics["train_rows"] == 40 and metrics["eval_rows"] == 8
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"], metrics
    assert metrics["train_tokens"] > 0 and metrics["tokens_per_second"] > 0
    assert result["artifact_kind"] == "lora_adapter"
    assert result["artifact_uri"] == f"s3://{s3_settings.bucket}/{prefix}/model/"
    assert result["training_config"]["sft"]["learning_rate"] == 3e-3
    assert read(store, f"{prefix}/eval_before.json")["eval_loss"] == metrics["eval_loss_before"]
    names = {o.object_name for o in store.client.list_objects(store.bucket, prefix=f"{prefix}/", recursive=True)}
    model = {n.removeprefix(f"{prefix}/model/") for n in names if n.startswith(f"{prefix}/model/")}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "training_config.json"} <= model
    assert any("/ray/run_lora/checkpoint_" in n for n in names)  # Ray Train's checkpoints, in S3
    assert not any(n.endswith("/error.json") for n in names)

    # the live progress arrived, with the run's token
    assert set(server.tokens) == {"Bearer run-token"}
    steps = [e.progress.step for e in server.events if e.HasField("progress")]
    assert steps == sorted(steps) and steps[-1] == 24
    assert any("eval_loss" in e.metrics.values for e in server.events if e.HasField("metrics"))

    # the adapter loads on the base and generates
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in model:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        store.client.fget_object(store.bucket, f"{prefix}/model/{name}", str(tmp_path / name))
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(student), tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is red in French?"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = prompt["input_ids"] if not isinstance(prompt, torch.Tensor) else prompt
    out = tuned.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert json.loads((tmp_path / "training_config.json").read_text())["train_rows"] == 40


def test_unknown_model_fails_before_training(store: ObjectStore, s3_settings: S3Settings, tmp_path: Path) -> None:
    spec_key, prefix = put_spec(store, "run_unknown", str(tmp_path / "no-such-model"), {"max_steps": 2})
    code, output, _ = run_recipe(s3_settings, spec_key)
    assert code != 0, output[-3000:]
    error = read(store, f"{prefix}/error.json")
    assert (error["code"], error["field"]) == ("unknown_model", "student_model")
    assert "no-such-model" in error["message"] and "path that the Ray workers can read" in error["message"]
