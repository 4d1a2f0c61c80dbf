"""EstimateRun: what a run would take before it starts, for every path (``services/trainer/estimates.py``)."""

from __future__ import annotations

import math

import grpc
import pytest
from rpc_refusals import refused
from test_distill_text import INPUTS, distill_request, inputs_file
from test_recipes import cli_run
from test_services import upload
from test_training import ROWS, run_request

from distillery.common.v1 import common_pb2
from distillery.ingest.v1 import ingest_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.trainer import estimates, run_recipes, run_requests
from services.trainer.estimates import Throughput

CPU = Throughput("cpu-2", 135e6, 500.0, True, "measured")
H100 = Throughput("H100", 0, 0, False, "estimate", peak_tflops=989)


def stored(**sft: int) -> dict:
    request = pb.CreateRunRequest(path=3, dataset_id="ds_x", student_model="org/SmolLM2-135M-Instruct",
                                  sft=pb.SftSettings(**sft))  # fmt: skip
    return run_requests.checked(request)


def test_the_size_of_a_student_is_read_from_its_name() -> None:
    assert estimates.params_of("HuggingFaceTB/SmolLM2-135M-Instruct") == 135e6
    assert estimates.params_of("Qwen/Qwen2.5-0.5B-Instruct") == 0.5e9
    assert estimates.params_of("/models/SmolLM2-360M-Instruct/") == 360e6
    assert estimates.params_of("meta-llama/Llama-3.2-1B") == 1e9
    assert estimates.params_of("org/tiny-llama") == 0  # says nothing: no durations, not a guess
    assert estimates.params_of("openai/whisper-large-v3") == 1550e6  # Whisper's sizes by name
    assert estimates.params_of("openai/whisper-large-v3-turbo") == 809e6
    assert estimates.params_of("/models/whisper-tiny.en") == 39e6


def test_a_speech_row_costs_a_whole_window_whatever_the_clip() -> None:
    request = run_requests.checked(pb.CreateRunRequest(path=common_pb2.TRAINING_PATH_FINETUNE_ASR, dataset_id="ds_x",
                                                       sft=pb.SftSettings(max_steps=10)))  # fmt: skip
    assert request["recipe"] == "speech" and request["student_model"] == "openai/whisper-large-v3"
    short = estimates.estimate(request, request["student_model"], 100, 20_000.0, 0.1, 1, throughputs=[CPU])
    long = estimates.estimate(request, request["student_model"], 100, 900_000.0, 0.1, 1, throughputs=[CPU])
    assert short.tokens_per_row == long.tokens_per_row == estimates.SPEECH_TOKENS_PER_ROW
    assert short.tokens_to_process == long.tokens_to_process > 10 * 16 * estimates.SPEECH_TOKENS_PER_ROW
    assert short.student_params == 1_550_000_000 and short.compute


def test_steps_tokens_and_durations_follow_the_settings_and_the_table() -> None:
    # 100 rows of 400 bytes (200 tokens), 10% held out: 90 train rows, batch 4 -> 23 steps an epoch, 3 epochs.
    found = estimates.estimate(stored(batch_size=4), "org/SmolLM2-135M", 100, 400.0, 0.1, 1, throughputs=[CPU, H100])
    assert (found.train_rows, found.eval_rows, found.steps, found.tokens_per_row) == (90, 10, 69, 200)
    train_tokens = 69 * 4 * 200
    assert found.tokens_to_process == int(train_tokens + 12 * 10 * 200 / 3)  # ten evals, before and after
    cpu, h100 = found.compute
    assert (cpu.compute, cpu.measured, h100.measured) == ("cpu-2", True, False)
    assert cpu.seconds == pytest.approx(found.tokens_to_process / 500.0)
    assert h100.tokens_per_second == pytest.approx(989e12 * estimates.MFU / (6 * 135e6))
    # A model twice the size trains half as fast; max_steps caps the steps; long rows are cut at max_seq_length.
    bigger = estimates.estimate(stored(batch_size=4), "org/m-270M", 100, 400.0, 0.1, 1, throughputs=[CPU])
    assert bigger.compute[0].tokens_per_second == pytest.approx(250.0)
    capped = estimates.estimate(stored(max_steps=10, max_seq_length=64), "org/m-135M", 100, 400.0, 0.1, 1,
                                throughputs=[CPU])  # fmt: skip
    assert (capped.steps, capped.tokens_per_row) == (10, 64)
    unknown = estimates.estimate(stored(), "org/tiny", 100, 400.0, 0.1, 1, throughputs=[CPU])
    assert not unknown.compute and any("not in its name" in n for n in unknown.notes)


def test_auto_values_are_sized_as_the_run_will_size_them() -> None:
    request = run_requests.checked(pb.CreateRunRequest(recipe="classify", path=3, dataset_id="ds_x"))
    found = estimates.estimate(request, request["student_model"], 100, 300.0, 0.1, 1, throughputs=[CPU])
    size = run_recipes.SplitSize(90, 0, 600)
    expected = run_recipes.sized(request["sft"], request["auto_fields"], request.get("auto_limits", {}), size)
    assert found.steps == expected["max_steps"] and found.steps > 0


def test_the_platform_table_has_a_measured_cpu_row_and_marked_gpu_estimates() -> None:
    table = {row.compute: row for row in estimates.table()}
    assert table["cpu-2"].measured and table["cpu-2"].tokens_per_second > 0
    assert {"L4", "A100", "H100"} <= set(table) and not any(table[g].measured for g in ("L4", "A100", "H100"))
    assert all(math.isfinite(row.at(135e6)) and row.at(135e6) > 0 for row in table.values())


def test_estimate_run_answers_for_every_path_and_creates_nothing(services, client_for, make_tenant):
    tenant = make_tenant()
    client = client_for(tenant)
    pairs = upload(client, ROWS).dataset
    found = client.trainer.EstimateRun(run_request(pairs.id, "org/SmolLM2-135M-Instruct"))
    assert found.train_rows + found.eval_rows == pairs.rows and found.steps == 24  # QUICK's max_steps
    assert found.student_params == 135_000_000 and {c.compute for c in found.compute} >= {"cpu-2", "H100"}
    assert not found.HasField("teacher")
    # distill-text: the teacher's rows, tokens and cost first, then the training on what it writes.
    inputs = upload(client, inputs_file(INPUTS), kind=ingest_pb2.DATASET_KIND_INPUTS).dataset
    distill = client.trainer.EstimateRun(distill_request(inputs.id, "org/SmolLM2-135M-Instruct"))
    assert distill.teacher.rows == len(INPUTS) * 2 and distill.teacher.input_tokens > 0
    assert distill.train_rows + distill.eval_rows == distill.teacher.rows
    assert not client.trainer.ListRuns(pb.ListRunsRequest()).runs  # nothing was created
    # Checked as CreateRun checks: a bad request is refused naming its field.
    err = refused(lambda: client.trainer.EstimateRun(run_request(pairs.id, "/etc")))
    assert "student_model" in err.details()
    refused(lambda: client.trainer.EstimateRun(run_request("ds_missing", "org/m-135M")), grpc.StatusCode.NOT_FOUND)
    # The CLI prints it and starts nothing.
    out = cli_run(services, tenant.api_key, "runs", "create", "--dataset", pairs.id, "--student",
                  "org/SmolLM2-135M-Instruct", "--max-steps", "24", "--estimate")  # fmt: skip
    assert "24 steps" in out and "Expected training time" in out and "cpu-2" in out
    assert not client.trainer.ListRuns(pb.ListRunsRequest()).runs
