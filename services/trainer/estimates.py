"""What a run will take before it starts (``EstimateRun``; ``distillery runs create --estimate``).

For every path: the teacher's rows, tokens and price where the run generates (the teacher's own
``EstimateJob``), and the training compute: the steps the run's settings take on its data (a recipe's auto
values sized as they will be, from the dataset's rows and bytes), the tokens those steps process, and
the expected duration on each compute of ``throughputs.toml``.

The rules, each an approximation a user can check against a real run (``runs show`` reports
``tokens_per_second``):

- tokens per row: the dataset's bytes per row / ``BYTES_PER_TOKEN`` (the sizing rule of ``run_recipes``,
  on the high side), at most ``max_seq_length``; for rows the teacher writes, its own token estimate;
- tokens to process: steps x rows per step (batch x accumulation x workers) x tokens per row, plus the
  mid-training evals (about ten, a forward pass over the eval rows each: a third of a training token);
- duration on a compute: tokens / its training throughput for the student's size. A measured row of the
  table (``measured = true``) is scaled by parameters (throughput ~ 1 / parameters); a GPU without a
  measurement is estimated from its peak bf16 FLOPs at ``MFU`` utilisation and 6 FLOPs per parameter and
  token (``measured = false``, said so in the answer). The student's size comes from its name
  (``SmolLM2-135M``, ``Qwen2.5-0.5B``), or Whisper's size (``whisper-large-v3``); a name without one gets the
  tokens but no durations;
- a speech run (finetune-asr): every clip is padded to Whisper's 30 s window, so a row costs the same whatever its
  length: ``SPEECH_TOKENS_PER_ROW``, the encoder's 1500 positions over its half of the weights and a transcript's
  ~50 tokens over the decoder's half, as tokens of the whole model;
- an OCR run (finetune-ocr): a row is its image's tokens and its text's, ``OCR_TOKENS_PER_ROW`` (a page's 576
  image tokens, a vision-language model's common budget, and a short text's 64): its dataset's bytes are mostly
  the image ZIP's, which say little about tokens.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillery.teacher.v1 import teacher_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.trainer import run_recipes, run_requests
from services.trainer.peers import Peers
from services.trainer.recipes.evals import EVALS_PER_RUN, planned_steps
from services.trainer.recipes.sft_settings import SftSettings

TABLE = Path(__file__).with_name("throughputs.toml")
BYTES_PER_TOKEN = run_recipes.BYTES_PER_TOKEN
MFU = 0.35
EVAL_TOKEN_COST = 1 / 3
SPEECH_TOKENS_PER_ROW = (1500 + 50) / 2
OCR_TOKENS_PER_ROW = 576 + 64
WHISPER_SIZES = {"tiny": 39e6, "base": 74e6, "small": 244e6, "medium": 769e6, "large": 1550e6, "turbo": 809e6}
_WHISPER = re.compile(r"whisper-large-v3-(turbo)|whisper-(tiny|base|small|medium|large|turbo)", re.IGNORECASE)
_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*([MB])(?![a-z])", re.IGNORECASE)


@dataclass(frozen=True)
class Throughput:
    """One row of ``throughputs.toml``: training tokens per second of a model size on a compute."""

    compute: str
    params: float  # of the model measured (or 0 for a GPU estimated from its FLOPs)
    tokens_per_second: float
    measured: bool
    note: str
    peak_tflops: float = 0.0

    def at(self, params: float) -> float:
        """Tokens per second for a model of ``params`` parameters."""
        if self.measured:
            return self.tokens_per_second * self.params / params
        return self.peak_tflops * 1e12 * MFU / (6 * params)


def table(path: Path = TABLE) -> list[Throughput]:
    with path.open("rb") as handle:
        rows = tomllib.load(handle)["throughput"]
    return [Throughput(**row) for row in rows]


def params_of(model: str) -> float:
    """Parameters named in a model's id or directory name (``135M``, ``0.5B``, a Whisper size); 0 when it names
    none."""
    name = Path(model.rstrip("/")).name
    if whisper := _WHISPER.search(name):
        return WHISPER_SIZES[(whisper.group(1) or whisper.group(2)).lower()]
    found = _SIZE.findall(name)
    if not found:
        return 0.0
    number, unit = found[-1]
    return float(number) * (1e6 if unit.upper() == "M" else 1e9)


def training_steps(request: dict[str, Any], train_rows: int, bytes_per_row: float, workers: int) -> dict[str, int]:
    """The resolved sft settings the run will train with: a recipe's auto fields sized as ``run_recipes`` will
    size them (the longest row taken as twice the mean: the dataset's rows are not read here)."""
    sft = dict(request["sft"])
    if request.get("auto_fields"):
        size = run_recipes.SplitSize(train_rows, 0, int(2 * bytes_per_row))
        sft.update(run_recipes.sized(sft, list(request["auto_fields"]), request.get("auto_limits", {}), size, workers))
    sft["max_steps"] = planned_steps(SftSettings(**sft), max(train_rows, 1), workers)
    return sft


def estimate(
    request: dict[str, Any], student: str, rows: int, bytes_per_row: float, eval_fraction: float, workers: int,
    teacher: teacher_pb2.JobEstimate | None = None, throughputs: list[Throughput] | None = None,
) -> pb.RunEstimate:  # fmt: skip
    """The estimate of a run (its request as stored, ``checked``) over ``rows`` rows of ``bytes_per_row``."""
    notes: list[str] = []
    media = {"TRAINING_PATH_FINETUNE_ASR": SPEECH_TOKENS_PER_ROW, "TRAINING_PATH_FINETUNE_OCR": OCR_TOKENS_PER_ROW}
    tokens_per_row = media.get(request.get("path", ""), bytes_per_row / BYTES_PER_TOKEN)
    if teacher is not None and teacher.rows:
        rows = teacher.rows + (rows if request.get("augment_count") else 0)
        tokens_per_row = (teacher.input_tokens + teacher.output_tokens) / teacher.rows
        notes.append(f"the teacher writes {teacher.rows} rows first; their size is the teacher's estimate")
    eval_rows = max(int(rows * eval_fraction), 1) if rows else 0
    train_rows = max(rows - eval_rows, 0)
    sft = training_steps(request, train_rows, tokens_per_row * BYTES_PER_TOKEN, workers)
    per_row = tokens_per_row if request.get("path") in media else min(tokens_per_row, sft["max_seq_length"])
    per_step = sft["batch_size"] * sft["gradient_accumulation_steps"] * workers
    train_tokens = sft["max_steps"] * per_step * per_row
    evals = EVALS_PER_RUN if sft["eval_every_steps"] != -1 else 0
    tokens = int(train_tokens + (evals + 2) * eval_rows * per_row * EVAL_TOKEN_COST)
    if request.get("grpo"):
        notes.append("GRPO steps are not in the durations: each generates completions, measured per run "
                     "(grpo_generation_s_per_step)")  # fmt: skip
    params = params_of(student)
    computes = []
    if params:
        for row in throughputs if throughputs is not None else table():
            speed = row.at(params)
            computes.append(pb.ComputeEstimate(
                compute=row.compute, tokens_per_second=speed, seconds=tokens / speed, measured=row.measured,
                note=row.note,
            ))  # fmt: skip
        notes.append("the times are the training's compute only: starting the job (Ray, loading the student) "
                     "adds about a minute, the evaluations' generation more")  # fmt: skip
    else:
        notes.append(f"the size of {student!r} is not in its name: no durations (the tokens are still right)")
    return pb.RunEstimate(
        train_rows=train_rows, eval_rows=eval_rows, steps=sft["max_steps"], tokens_per_row=per_row,
        tokens_to_process=tokens, student_params=int(params), compute=computes, notes=notes,
        teacher=teacher if teacher is not None else None,
    )  # fmt: skip


async def for_run(
    peers: Peers, tenant_id: str, path: int, stored: dict[str, Any], deployment: run_recipes.Deployment
) -> pb.RunEstimate:
    """The estimate of a checked request (``run_requests.checked``): its dataset's size from ingest, the teacher's
    own estimate where the run generates (an augmentation's needs the split: only its row count is known)."""
    rows, bytes_per_row = 0, 0.0
    if stored.get("dataset_id"):
        dataset = await peers.get_dataset(tenant_id, stored["dataset_id"])
        rows, bytes_per_row = int(dataset.rows), dataset.size_bytes / max(dataset.rows, 1)
    teacher = None
    if run_requests.generates(path, stored) and not stored.get("augment_count"):
        teacher = await peers.estimate_job(tenant_id, run_requests.teacher_request(path, stored))
    workers, _ = run_recipes.job_compute(stored, deployment)
    student = (stored.get("student_source") or {}).get("base_model") or stored["student_model"]
    found = estimate(stored, student, rows, bytes_per_row, stored.get("eval_fraction") or 0.1, workers, teacher)
    if stored.get("augment_count"):
        found.notes.append(f"the teacher first writes {stored['augment_count']} new pairs like the train split's "
                           "(not counted above)")  # fmt: skip
    return found
