"""CreateRun's guards (issue 16): where a student model may come from, one run per idempotency key however
many callers race with it, and every field of the request bounded (INVALID_ARGUMENT naming the field,
never INTERNAL)."""

from __future__ import annotations

import os
import threading
from collections import Counter
from functools import partial

import grpc
import pytest
from rpc_refusals import assert_refused, refused

from distillery.common.v1 import common_pb2
from distillery.registry.v1 import registry_pb2
from distillery.teacher.v1 import teacher_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.common.errors import InvalidArgument
from services.common.ids import check_id
from services.trainer.settings import model_roots
from services.trainer.students import StudentSources

FINETUNE_TEXT = common_pb2.TRAINING_PATH_FINETUNE_TEXT
HUB_STUDENT = "HuggingFaceTB/SmolLM2-135M-Instruct"


def finetune(dataset_id: str = "ds_missing", student: str = HUB_STUDENT, **extra) -> pb.CreateRunRequest:
    return pb.CreateRunRequest(**{"path": FINETUNE_TEXT, "dataset_id": dataset_id, "student_model": student, **extra})


def race(call, callers: int) -> list[tuple[str, str]]:
    """``call()`` from ``callers`` threads released at once: (run id or "", status code name) of each."""
    start, results, lock = threading.Barrier(callers), [], threading.Lock()

    def one() -> None:
        start.wait()
        try:
            answer = (call().id, "OK")
        except grpc.RpcError as err:
            answer = ("", err.code().name)
        with lock:
            results.append(answer)

    threads = [threading.Thread(target=one) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_concurrent_creates_with_one_key_make_one_run_and_everyone_gets_it(services, client_for, make_tenant):
    client = client_for(make_tenant(allowance=3))
    assert client.registry.GetQuota(registry_pb2.GetQuotaRequest()).available == 3
    request = finetune(idempotency_key="race-1")
    results = race(partial(client.trainer.CreateRun, request), 20)
    codes = Counter(code for _, code in results)
    print(f"20 concurrent CreateRun, one key, 3 free slots: {dict(codes)}, run ids {len({r for r, _ in results})}")
    assert codes == {"OK": 20}, codes
    assert len({run_id for run_id, _ in results}) == 1
    assert len(client.trainer.ListRuns(pb.ListRunsRequest()).runs) == 1
    assert client.registry.GetQuota(registry_pb2.GetQuotaRequest()).reserved <= 1  # the run fails soon: 0 then
    # The same key with other parameters is refused, naming the key; the same parameters still get the run.
    err = assert_refused(
        partial(client.trainer.CreateRun, finetune("ds_other", idempotency_key="race-1")),
        "idempotency_key",
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "different" in err.details()
    assert client.trainer.CreateRun(request).id == results[0][0]
    refused(partial(client.trainer.CreateRun, finetune("ds_other", idempotency_key="race-1")),
            grpc.StatusCode.FAILED_PRECONDITION)  # fmt: skip


# --- where a student model may come from ---


def test_student_sources_without_the_service(tmp_path):
    root = tmp_path / "models"
    (root / "tiny").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    sources = StudentSources(allow_hub=True, roots=(str(root),))
    assert sources.check(f" {root}/tiny ") == os.path.realpath(root / "tiny")
    assert sources.check(f"{root}/tiny/../tiny") == os.path.realpath(root / "tiny")
    assert sources.check(HUB_STUDENT) == HUB_STUDENT
    for bad, said in [
        (f"{root}/escape", "not under a model directory"),  # a symlink out of the root
        (f"{root}/../outside", "not under a model directory"),
        (str(root), "not under a model directory"),  # the root itself is no model
        ("/etc", "not under a model directory"),
        ("tiny", "neither a hub id"),
        ("./tiny", "neither a hub id"),
        ("org/../etc", "neither a hub id"),
        ("https://example.com/m", "neither a hub id"),
        ("model:", "after 'model:'"),
        ("model:../x", "after 'model:'"),
        ("", "required"),
        ("org/m\x00", "control character"),
        ("a/" + "b" * 600, "at most 512"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            sources.check(bad)
        assert err.value.field == "student_model" and said in err.value.message, (bad, err.value.message)
    assert sources.check("mdl_0123") == sources.check("model:mdl_0123") == "mdl_0123"  # looked up by CreateRun
    hub_off = StudentSources(allow_hub=False, roots=(str(root),))
    with pytest.raises(InvalidArgument, match="DISTILLERY_ALLOW_HUB_MODELS=false"):
        hub_off.check(HUB_STUDENT)
    with pytest.raises(InvalidArgument, match="neither hub models nor model directories"):
        StudentSources(allow_hub=False).check("/models/x")


def test_a_registered_student_continues_from_its_own_artifacts(tmp_path):
    """``continued_from``: what a run training a registered model further starts from, and what it refuses."""
    sources = StudentSources(allow_hub=True, roots=(str(tmp_path),))
    lora, full = registry_pb2.ARTIFACT_KIND_LORA_ADAPTER, registry_pb2.ARTIFACT_KIND_FULL_WEIGHTS

    def model(kind: int = lora, uri: str = "s3://b/tenants/t1/runs/run_a/model/", base: str = HUB_STUDENT):
        return registry_pb2.Model(id="mdl_a", tenant_id="t1", base_model=base, artifact_kind=kind, artifact_uri=uri)

    assert sources.continued_from(model(), "b", full_finetune=False) == {
        "model_id": "mdl_a", "base_model": HUB_STUDENT, "artifact_kind": "lora_adapter",
        "artifact_prefix": "tenants/t1/runs/run_a/model",
    }  # fmt: skip
    assert sources.continued_from(model(lora), "b", full_finetune=True)["artifact_kind"] == "lora_adapter"  # merged
    assert sources.continued_from(model(full), "b", full_finetune=True)["artifact_kind"] == "full_weights"
    for bad, said in [
        (dict(kind=full), "full fine-tune"),  # a LoRA run over full weights could not be served
        (dict(kind=registry_pb2.ARTIFACT_KIND_UNSPECIFIED), "no artifacts a run can continue"),
        (dict(uri="s3://b/tenants/t2/runs/run_x/model/"), "not where this deployment keeps models"),
        (dict(uri="s3://other/tenants/t1/runs/run_a/model/"), "not where this deployment keeps models"),
        (dict(uri="s3://b/tenants/t1/../t2/model/"), "not where this deployment keeps models"),
        (dict(base="/etc"), "no longer allows"),
        (dict(base="mdl_b"), "names no base model"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            sources.continued_from(model(**bad), "b", full_finetune=False)
        assert err.value.field == "student_model" and said in err.value.message, (bad, err.value.message)
    with pytest.raises(InvalidArgument, match="no longer allows"):
        StudentSources(allow_hub=False, roots=(str(tmp_path),)).continued_from(model(), "b", full_finetune=False)


def test_model_roots_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILLERY_MODEL_ROOTS", f"{tmp_path}/a: {tmp_path}/b/../c:")
    assert model_roots(os.environ["DISTILLERY_MODEL_ROOTS"]) == (f"{tmp_path}/a", f"{tmp_path}/c")
    with pytest.raises(InvalidArgument, match="not an absolute path"):
        model_roots("models")


def test_create_run_takes_students_from_allowed_places_only(services, client_for, make_tenant, tmp_path):
    client = client_for(make_tenant())
    # Another tenant's model in the registry's shared cache, a symlink to it under the allowed root, '..'.
    cached = services.workdir / "models" / "mdl_other_tenant"
    cached.mkdir(parents=True, exist_ok=True)
    (tmp_path / "link").symlink_to(cached)
    for student in [str(cached), str(tmp_path / "link"), f"{tmp_path}/../../../../etc", "/etc/passwd", "tiny",
                    "model:mdl_0123", "mdl_0123", "x" * 3_000_000]:  # fmt: skip
        assert_refused(partial(client.trainer.CreateRun, finetune(student=student)), "student_model")
    # A directory under the allowed root: the run stores it resolved.
    (tmp_path / "tiny").mkdir()
    run = client.trainer.CreateRun(finetune(student=f"{tmp_path}/x/../tiny"))
    assert run.student_model == os.path.realpath(tmp_path / "tiny")
    assert client.trainer.CreateRun(finetune(student=HUB_STUDENT)).student_model == HUB_STUDENT


# --- every field bounded ---


def test_every_create_run_field_is_bounded(services, client_for, make_tenant):
    client = client_for(make_tenant())
    distill = common_pb2.TRAINING_PATH_DISTILL_TEXT
    tools = common_pb2.TRAINING_PATH_DISTILL_TOOLS
    prompts = [teacher_pb2.NamedSystemPrompt(name=f"p{i}", text="Answer briefly.") for i in range(10_000)]
    cases = [
        (finetune(path=77), "path"),
        (finetune(mode=77), "mode"),
        (finetune(sft=pb.SftSettings(lora_r=100_000)), "sft.lora_r"),
        (finetune(sft=pb.SftSettings(batch_size=1_000_000)), "sft.batch_size"),
        (finetune(sft=pb.SftSettings(max_steps=2**31 - 1)), "sft.max_steps"),
        (finetune(sft=pb.SftSettings(epochs=1000)), "sft.epochs"),
        (finetune(sft=pb.SftSettings(gradient_accumulation_steps=5000)), "sft.gradient_accumulation_steps"),
        (finetune(sft=pb.SftSettings(lora_alpha=100_000)), "sft.lora_alpha"),
        (finetune(sft=pb.SftSettings(max_seq_length=10**6)), "sft.max_seq_length"),
        (finetune(sft=pb.SftSettings(seed=2**40)), "sft.seed"),
        (finetune(sft=pb.SftSettings(learning_rate=float("nan"))), "sft.learning_rate"),
        (finetune(idempotency_key="k" * 100_000), "idempotency_key"),
        (finetune(idempotency_key="k\x00"), "idempotency_key"),
        (finetune(dataset_id="ds_\x00"), "dataset_id"),
        (finetune(dataset_id="ds_" + "x" * 200), "dataset_id"),
        (finetune(eval_dataset_id="ds_\x00"), "eval_dataset_id"),
        (finetune(teacher="openai:\x00", augment_count=5), "teacher"),
        (finetune(augment_count=10**9), "augment_count"),
        (finetune(eval_fraction=float("nan")), "eval_fraction"),
        (finetune(model_name="m" * 100), "model_name"),
        (pb.CreateRunRequest(path=distill, dataset_id="ds_x", student_model=HUB_STUDENT, teacher="openai:gpt-4.1-mini",
                             system_prompts=prompts), "system_prompts"),
        (pb.CreateRunRequest(path=tools, student_model=HUB_STUDENT, teacher="platform:t", tool_ids=["tl_\x00"],
                             seed_prompts=["What's the weather?"]), "tool_ids[0]"),
        (pb.CreateRunRequest(path=tools, student_model=HUB_STUDENT, teacher="platform:t",
                             tool_ids=[f"tl_{i}" for i in range(100)], seed_prompts=["Hi"]), "tool_ids"),
        (pb.CreateRunRequest(path=tools, student_model=HUB_STUDENT, teacher="platform:t", tool_ids=["tl_x"],
                             seed_prompts=["Hi"] * 10_001), "seed_prompts"),
        (pb.CreateRunRequest(path=tools, student_model=HUB_STUDENT, teacher="platform:t", tool_ids=["tl_x"],
                             seed_prompts=["Hi"], mode=common_pb2.TRAINING_MODE_SFT_RL,
                             grpo=pb.GrpoSettings(prompts_per_step=1000)), "grpo.prompts_per_step"),
        (pb.CreateRunRequest(path=tools, student_model=HUB_STUDENT, teacher="platform:t", tool_ids=["tl_x"],
                             seed_prompts=["Hi"], mode=common_pb2.TRAINING_MODE_SFT_RL,
                             grpo=pb.GrpoSettings(max_steps=2**31 - 1)), "grpo.max_steps"),
    ]  # fmt: skip
    for request, field in cases:
        assert_refused(partial(client.trainer.CreateRun, request), field)
    for call in [
        lambda: client.trainer.GetRun(pb.GetRunRequest(id="run_\x00")),
        lambda: client.trainer.CancelRun(pb.CancelRunRequest(id="run_\x00")),
        lambda: list(client.trainer.WatchRun(pb.WatchRunRequest(id="run_\x00"), timeout=10)),
        lambda: client.trainer.GetRunLogs(pb.GetRunLogsRequest(id="run_\x00")),
        lambda: client.trainer.GetRunLogs(pb.GetRunLogsRequest(id="r" * 1000)),
    ]:
        assert_refused(call, "id")
    assert_refused(lambda: client.trainer.GetRunLogs(pb.GetRunLogsRequest(id="run_x", tail=-1)), "tail")
    assert_refused(lambda: client.trainer.ListRuns(pb.ListRunsRequest(state=77)), "state")
    refused(lambda: client.trainer.GetRun(pb.GetRunRequest(id="run_0123")), grpc.StatusCode.NOT_FOUND)
    assert client.registry.GetQuota(registry_pb2.GetQuotaRequest()).reserved == 0  # nothing held


def test_check_id():
    assert check_id("", "dataset_id") == "" and check_id("ds_0a-b.c:d", "dataset_id") == "ds_0a-b.c:d"
    for bad in ["ds_\x00", "ds x", "ds_\n", "ds/../x", "é", "x" * 129]:
        with pytest.raises(InvalidArgument) as err:
            check_id(bad, "dataset_id")
        assert err.value.field == "dataset_id"
