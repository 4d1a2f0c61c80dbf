"""A run's inputs at VALIDATING: its datasets checked (kind, violations) and split into train and eval by ingest.

Each refusal ends the run FAILED with a ``RunFailed`` a user can act on, naming the request field at fault
(``dataset_id`` or ``eval_dataset_id``) and, for a dataset with violations, the first ones.
"""

from __future__ import annotations

import json
from typing import Any

from psycopg_pool import AsyncConnectionPool

from distillery.common.v1 import common_pb2
from distillery.ingest.v1 import ingest_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.objects import ObjectStore, tenant_key
from services.trainer import runs
from services.trainer.peers import Peers
from services.trainer.runs import RunFailed

VIOLATIONS_IN_ERROR = 10
KIND_NAMES: dict[ingest_pb2.DatasetKind.ValueType, str] = {
    ingest_pb2.DATASET_KIND_INPUTS: "inputs", ingest_pb2.DATASET_KIND_TOOL_CALLS: "tool-calls",
    ingest_pb2.DATASET_KIND_ASR: "asr", ingest_pb2.DATASET_KIND_OCR: "ocr",
}  # fmt: skip
# The paths that train on media, their dataset kind, and the field of a row naming the upload it reads.
MEDIA_KINDS = {common_pb2.TRAINING_PATH_FINETUNE_ASR: ingest_pb2.DATASET_KIND_ASR,
               common_pb2.TRAINING_PATH_FINETUNE_OCR: ingest_pb2.DATASET_KIND_OCR}  # fmt: skip
MEDIA_KEYS = {common_pb2.TRAINING_PATH_FINETUNE_ASR: "audio_key", common_pb2.TRAINING_PATH_FINETUNE_OCR: "archive_key"}


async def validate(pool: AsyncConnectionPool, peers: Peers, run: runs.Run) -> None:
    """VALIDATING: the run's datasets checked, and split where the run trains on what it was given."""
    request = run.request
    if run.path == common_pb2.TRAINING_PATH_DISTILL_TEXT:
        await check_dataset(peers, run, request["dataset_id"], "dataset_id", ingest_pb2.DATASET_KIND_INPUTS)
        return  # split after generation, on the generated pairs
    if run.path in MEDIA_KINDS:  # finetune-asr, finetune-ocr: their datasets train as they are
        kind = MEDIA_KINDS[common_pb2.TrainingPath.ValueType(run.path)]
        await check_dataset(peers, run, request["dataset_id"], "dataset_id", kind)
        if request.get("eval_dataset_id"):
            await check_dataset(peers, run, request["eval_dataset_id"], "eval_dataset_id", kind)
        await split(pool, peers, run, request["dataset_id"])
        return
    if run.path == common_pb2.TRAINING_PATH_DISTILL_TOOLS:
        if not request.get("dataset_id"):
            return  # the teacher's trajectories are split after generation
        await check_dataset(peers, run, request["dataset_id"], "dataset_id", ingest_pb2.DATASET_KIND_TOOL_CALLS)
        await split(pool, peers, run, request["dataset_id"])
        return
    await check_dataset(peers, run, request["dataset_id"], "dataset_id")
    if request.get("eval_dataset_id"):
        await check_dataset(peers, run, request["eval_dataset_id"], "eval_dataset_id")
    await split(pool, peers, run, request["dataset_id"])


async def split(pool: AsyncConnectionPool, peers: Peers, run: runs.Run, dataset_id: str) -> None:
    """Ingest splits ``dataset_id`` (and the run's eval dataset) into train and eval; kept on the run."""
    request = run.request
    try:
        split = await peers.split(
            run.tenant_id, dataset_id, request.get("eval_dataset_id", ""),
            request.get("eval_fraction", 0.0), int(request.get("sft", {}).get("seed", 0)),
        )  # fmt: skip
    except (FailedPrecondition, InvalidArgument, NotFound) as err:
        raise RunFailed("invalid_dataset", err.message, err.field or "dataset_id") from None
    await runs.save(pool, run.id, split={
        "id": split.id, "train_key": split.train_key, "eval_key": split.eval_key,
        "train_rows": split.train_rows, "eval_rows": split.eval_rows, "overlap_removed": split.overlap_removed,
    })  # fmt: skip
    removed = f", {split.overlap_removed} train rows dropped as duplicates of eval rows" * bool(split.overlap_removed)
    await runs.note(
        pool, run.id, f"split {split.id}: {split.train_rows} train rows, {split.eval_rows} eval rows{removed}"
    )


async def check_dataset(
    peers: Peers,
    run: runs.Run,
    dataset_id: str,
    field: str,
    wanted: ingest_pb2.DatasetKind.ValueType = ingest_pb2.DATASET_KIND_PAIRS,
) -> None:
    """The dataset exists, is of the kind the path trains on, and has no violations; else the run fails."""
    try:
        dataset = await peers.get_dataset(run.tenant_id, dataset_id)
    except NotFound:
        raise RunFailed("dataset_not_found", f"dataset {dataset_id} not found; upload it first", field) from None
    if dataset.kind != wanted:
        kind = ingest_pb2.DatasetKind.Name(dataset.kind).removeprefix("DATASET_KIND_").lower()
        if wanted == ingest_pb2.DATASET_KIND_INPUTS:
            needed = "distillation answers an input-only dataset (upload it with --kind inputs)"
        elif wanted == ingest_pb2.DATASET_KIND_TOOL_CALLS:
            needed = "distill-tools trains on a tool-calls dataset (upload it with --kind tool-calls)"
        elif wanted == ingest_pb2.DATASET_KIND_ASR:
            needed = "finetune-asr trains on an asr dataset (upload the clips and their manifest with --kind asr)"
        elif wanted == ingest_pb2.DATASET_KIND_OCR:
            needed = "finetune-ocr trains on an ocr dataset (upload the image ZIP and its manifest with --kind ocr)"
        else:
            needed = "fine-tuning text trains on a pairs dataset"
        raise RunFailed("invalid_dataset", f"{needed}; {dataset_id} is a {kind} dataset", field)
    if not dataset.valid:
        report = dataset.report
        violations = [
            {"line": v.line, "field": v.field, "code": v.code, "message": v.message, "hint": v.hint}
            for v in report.violations[:VIOLATIONS_IN_ERROR]
        ]
        first = report.violations[0] if report.violations else None
        where = f"; first: line {first.line}, field {first.field or '-'}: {first.message}" if first else ""
        raise RunFailed(
            "invalid_dataset",
            f"dataset {dataset_id} has {report.violation_count} violation(s){where}. Fix them and upload it "
            f"again (`distillery datasets validate FILE --kind {KIND_NAMES.get(wanted, 'pairs')}` shows them all)",
            field,
            violations,
        )


def media_keys(store: ObjectStore, run: runs.Run) -> list[str]:
    """The S3 keys of the uploads a media run's split names (an asr run's clips, an ocr run's image ZIPs): its
    job reads those and no other upload. Each must lie among the tenant's own uploads, as ingest writes them;
    another is refused. Blocking: call it in a thread."""
    split, own, field = (
        run.split or {},
        tenant_key(run.tenant_id, "uploads") + "/",
        MEDIA_KEYS[common_pb2.TrainingPath.ValueType(run.path)],
    )
    keys: set[str] = set()
    for side in ("train_key", "eval_key"):
        for number, line in enumerate(store.get_bytes(split[side]).decode().splitlines(), 1):
            if not line.strip():
                continue
            key = json.loads(line).get(field, "")
            if not (isinstance(key, str) and key.startswith(own) and ".." not in key):
                raise RunFailed("invalid_dataset", f"row {number} of the split's {side.removesuffix('_key')} side "
                                "names no upload of yours: upload the dataset again", "dataset_id")  # fmt: skip
            keys.add(key)
    return sorted(keys)


def made_from(run: runs.Run) -> dict[str, Any]:
    """What the model card says a model was made from, beside the recipe's training_config: the recipe and
    the data (dataset ids, the teacher and its generation job, the split)."""
    split, generation = run.split or {}, run.generation or {}
    data = {
        "dataset_id": run.request.get("dataset_id", ""), "eval_dataset_id": run.request.get("eval_dataset_id", ""),
        "teacher": run.request.get("teacher", ""), "generation_job_id": generation.get("job_id", ""),
        "split_id": split.get("id", ""),
    }  # fmt: skip
    return {"recipe": run.request.get("recipe", ""), "data": {k: v for k, v in data.items() if v}}
