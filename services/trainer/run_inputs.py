"""A run's inputs at VALIDATING: its datasets checked (kind, violations) and split into train and eval by ingest.

Each refusal ends the run FAILED with a ``RunFailed`` a user can act on, naming the request field at fault
(``dataset_id`` or ``eval_dataset_id``) and, for a dataset with violations, the first ones.
"""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from distillery.common.v1 import common_pb2
from distillery.ingest.v1 import ingest_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.trainer import runs
from services.trainer.peers import Peers
from services.trainer.runs import RunFailed

VIOLATIONS_IN_ERROR = 10


async def validate(pool: AsyncConnectionPool, peers: Peers, run: runs.Run) -> None:
    """VALIDATING: the run's datasets checked, and split where the run trains on what it was given."""
    request = run.request
    if run.path == common_pb2.TRAINING_PATH_DISTILL_TEXT:
        await check_dataset(peers, run, request["dataset_id"], "dataset_id", ingest_pb2.DATASET_KIND_INPUTS)
        return  # split after generation, on the generated pairs
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
    peers: Peers, run: runs.Run, dataset_id: str, field: str, wanted: int = ingest_pb2.DATASET_KIND_PAIRS
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
            f"again (`distillery datasets validate FILE --kind pairs` shows them all)",
            field,
            violations,
        )
