"""The rubric RPCs of TrainerService (CreateRubric, GetRubric, ListRubrics, ValidateRubric) and the proto forms
of a stored rubric and of a rubric's validation (also ``Run.rubric_validation``).

``RubricRpcs`` is a part of ``TrainerServicer`` (``servicer.py``): it uses its ``pool`` and its supervisor's
pipeline (the peers, the object store). Every request field is bounded here before it reaches a query or a
parse; a refusal names the field.
"""

from __future__ import annotations

import asyncio
import dataclasses
from functools import partial
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from minio.error import S3Error

from distillery.common.v1 import common_pb2
from distillery.ingest.v1 import ingest_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.common import auth
from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.common.ids import check_count, check_id, check_text
from services.common.protoconv import page_size, timestamp
from services.trainer import rubric_checks, rubric_store
from services.trainer.graders import MAX_ANSWER_CHARS
from services.trainer.rubric import MAX_FILE_CHARS, parse_rubric

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from services.trainer.supervisor import Supervisor

FORMATS = ("", "yaml", "json")
MAX_FORMAT_CHARS = 16
MAX_NAME_CHARS = 64


def rubric_pb(stored: rubric_store.StoredRubric) -> pb.Rubric:
    message = pb.Rubric(
        id=stored.id, name=stored.name, version=stored.version, description=stored.rubric.get("description", ""),
        created_at=timestamp(stored.created_at),
    )  # fmt: skip
    for criterion in stored.rubric["criteria"]:
        added = message.criteria.add(name=criterion["name"], kind=criterion["kind"], weight=criterion["weight"])
        added.params.update(criterion.get("params") or {})
        if prompt := criterion.get("judge_prompt"):
            added.judge_prompt.CopyFrom(pb.JudgePrompt(**prompt))
    return message


def validation_pb(shown: dict[str, Any] | None) -> pb.RubricValidation | None:
    """A report of ``rubric_checks.report`` as the API shows it; None for none."""
    if not shown:
        return None
    message = pb.RubricValidation()
    fields = {f.name for f in pb.RubricValidation.DESCRIPTOR.fields} - {"judge_usage"}
    json_format.ParseDict({k: v for k, v in shown.items() if k in fields}, message, ignore_unknown_fields=True)
    usage = shown.get("judge_usage") or {}
    message.judge_usage.input_tokens = int(usage.get("input_tokens", 0))
    message.judge_usage.output_tokens = int(usage.get("output_tokens", 0))
    message.judge_usage.requests = int(usage.get("requests", 0))
    message.judge_usage.estimated_cost_usd = float(usage.get("estimated_cost_usd", 0.0))
    return message


class RubricRpcs:
    """The rubric methods of ``TrainerServicer`` (who may call them: ``access.py``)."""

    pool: AsyncConnectionPool
    supervisor: Supervisor

    async def CreateRubric(self, request: Any, context: Any) -> pb.Rubric:
        if len(request.text) > MAX_FILE_CHARS:
            raise InvalidArgument(f"text is {len(request.text)} characters long: a rubric file has at most "
                                  f"{MAX_FILE_CHARS}", field="text")  # fmt: skip
        if not request.text.strip():
            raise InvalidArgument("text is empty: give the rubric file's text (YAML or JSON)", field="text")
        fmt = check_text(request.format, "format", MAX_FORMAT_CHARS).lower()
        if fmt not in FORMATS:
            raise InvalidArgument(f"format {request.format!r} is not yaml or json (or empty, told from the text)",
                                  field="format")  # fmt: skip
        if fmt == "json" and not request.text.lstrip().startswith("{"):
            raise InvalidArgument("the rubric file is not JSON: a JSON rubric is one object, starting with '{'",
                                  field="text")  # fmt: skip
        rubric = parse_rubric(request.text)  # a refusal names the file's field: criteria[2].params.pattern
        if request.name:
            check_text(request.name, "name", MAX_NAME_CHARS)
            rubric = dataclasses.replace(rubric, name=request.name)
        stored, _ = await rubric_store.create(self.pool, auth.current_caller().tenant_id, rubric)
        return rubric_pb(stored)

    async def GetRubric(self, request: Any, context: Any) -> pb.Rubric:
        return rubric_pb(await rubric_store.get(self.pool, auth.current_caller().tenant_id, request.rubric))

    async def ListRubrics(self, request: Any, context: Any) -> pb.ListRubricsResponse:
        found, next_token = await rubric_store.list_page(
            self.pool, auth.current_caller().tenant_id, page_size(request.page), request.page.page_token
        )
        page = common_pb2.PageResponse(next_page_token=next_token)
        return pb.ListRubricsResponse(rubrics=[rubric_pb(r) for r in found], page=page)

    async def ValidateRubric(self, request: Any, context: Any) -> pb.RubricValidation:
        tenant_id = auth.current_caller().tenant_id
        check_id(request.dataset_id, "dataset_id")
        check_count(request.answers, "answers", rubric_checks.MAX_ROWS)
        for i, answer in enumerate(request.answers):
            if len(answer) > MAX_ANSWER_CHARS:
                raise InvalidArgument(f"answers[{i}] is {len(answer)} characters long: give at most "
                                      f"{MAX_ANSWER_CHARS}", field=f"answers[{i}]")  # fmt: skip
        if not 0 <= request.max_rows <= rubric_checks.MAX_ROWS:
            raise InvalidArgument(f"max_rows must be 1 to {rubric_checks.MAX_ROWS} (0: "
                                  f"{rubric_checks.DEFAULT_ROWS})", field="max_rows")  # fmt: skip
        if request.answers and request.max_rows and request.max_rows != len(request.answers):
            raise InvalidArgument(f"max_rows is {request.max_rows} but {len(request.answers)} answers are given: "
                                  "give one answer per row scored (or max_rows 0)", field="max_rows")  # fmt: skip
        if not request.dataset_id:
            raise InvalidArgument("dataset_id is required: the pairs dataset whose rows the rubric scores",
                                  field="dataset_id")  # fmt: skip
        stored = await rubric_store.get(self.pool, tenant_id, request.rubric)
        pipeline = self.supervisor.pipeline
        dataset = await pipeline.peers.get_dataset(tenant_id, request.dataset_id)
        if dataset.kind != ingest_pb2.DATASET_KIND_PAIRS or not dataset.valid or not dataset.canonical_key:
            raise FailedPrecondition(f"dataset {request.dataset_id} is not a valid pairs dataset: a rubric scores "
                                     "pairs (a task and its reference answer)", field="dataset_id")  # fmt: skip
        try:
            text = (await asyncio.to_thread(pipeline.store.get_bytes, dataset.canonical_key)).decode("utf-8")
        except S3Error as err:
            raise Unavailable(f"cannot read dataset {request.dataset_id} ({err.code})") from None
        limit = len(request.answers) or request.max_rows or rubric_checks.DEFAULT_ROWS
        rows = rubric_checks.rows_of(text, limit, f"dataset {request.dataset_id}", "dataset_id")
        answers = list(request.answers) or None
        if answers is not None and len(answers) > len(rows):
            raise InvalidArgument(f"{len(answers)} answers, but dataset {request.dataset_id} has {len(rows)} rows",
                                  field="answers")  # fmt: skip
        shown = await rubric_checks.report(
            stored, rows, answers, partial(pipeline.peers.judge, tenant_id), "the answers given"
        )
        out = validation_pb(shown)
        assert out is not None
        return out
