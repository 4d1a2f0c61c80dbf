"""A stored rubric checked on the first rows of an eval set: what ``ValidateRubric`` answers and what a run with
a rubric records before it trains (``rubric_runs.py``).

The rows are pairs (canonical ``{"messages": [...]}`` JSONL): each row's task is its turns before the last,
its reference the last (the assistant's). ``report`` scores the references and the base answers on every
criterion (``graders.validate``), the judge criteria through the teacher service (``judging``: its limits
and usage accounting; a judge the teacher refuses, such as a provider without a key, is that criterion's
problem, named), and returns what the user is shown: per criterion the means on the references and the
base answers, the spread, the rows it could not score and its problem; the weighted totals; ``ok``; the
judge's usage; the rubric's id and version; whose answers ``base`` holds. ``refusal(report)`` is the
INVALID_ARGUMENT naming the first criterion with a problem (``rubric.criteria[1]``), or None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.trainer import judging
from services.trainer.graders import GradeError, Judged, Row, Scored, score, validate
from services.trainer.recipes.failures import RunFailure
from services.trainer.recipes.splits import prompt_completion
from services.trainer.rubric_store import StoredRubric

DEFAULT_ROWS = 16
MAX_ROWS = 64
REFERENCES_ONLY = "none (the references alone)"


def task_text(turns: Sequence[dict[str, Any]]) -> str:
    """A row's task as the judge reads it: the user's message, or every turn as ``role: text`` lines."""
    if len(turns) == 1:
        return str(turns[0]["content"])
    return "\n".join(f"{turn['role']}: {turn['content']}" for turn in turns)


def rows_of(text: str, limit: int, name: str, field: str) -> list[Row]:
    """The first ``limit`` rows of a pairs JSONL as rows to score (``input`` and ``reference``); a line that is
    not a pairs row is INVALID_ARGUMENT naming ``field``."""
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = prompt_completion(line, f"{name}, line {number}")
        except RunFailure as err:
            raise InvalidArgument(f"{err.message}: a rubric scores pairs (a task and its reference answer)",
                                  field=field) from None  # fmt: skip
        rows.append(Row(task_text(row["prompt"]), str(row["completion"][-1]["content"])))
        if len(rows) == limit:
            break
    if not rows:
        raise InvalidArgument(f"the {name} has no rows to check the rubric on", field=field)
    return rows


async def report(
    stored: StoredRubric, rows: Sequence[Row], answers: Sequence[str] | None, judge: judging.JudgeCall, base: str
) -> dict[str, Any]:
    """The rubric scored on ``rows``' references and ``answers`` (None: the references alone), as shown."""
    rubric = stored.parsed()
    alone = answers is None
    base_answers = [r.reference for r in rows] if alone else list(answers or [])
    if len(base_answers) != len(rows):
        raise InvalidArgument(f"{len(base_answers)} answers for {len(rows)} rows: give one answer per row scored, "
                              "in the dataset's order", field="answers")  # fmt: skip
    references, answered = (
        [Row(r.input, r.reference, r.reference) for r in rows],
        [Row(r.input, r.reference, a) for r, a in zip(rows, base_answers, strict=True)],
    )
    judged: dict[str, Judged] = {}
    for _, criterion in rubric.judges:
        usage: dict[str, float] = {}
        try:
            on_references = await judging.judge_rows(criterion, references, judge, usage)
            on_base = on_references if alone else await judging.judge_rows(criterion, answered, judge, usage)
        except (InvalidArgument, FailedPrecondition, NotFound, PermissionDenied) as err:
            failed: list[Scored] = [GradeError(criterion.name, 0, f"the teacher refused its judge: {err.message}")]
            on_references = on_base = failed * len(rows)
        judged[criterion.name] = Judged(on_references, on_base, usage)
    validation = validate(rubric, rows, base_answers, judged)
    shown = validation.to_dict()
    shown["rubric_name"] = shown.pop("rubric")
    refused = validation.refusal()
    return {
        **shown, "rubric_id": stored.id, "rubric_version": stored.version, "base": REFERENCES_ONLY if alone else base,
        "refusal": {"message": refused.message, "field": refused.field} if refused is not None else None,
    }  # fmt: skip


def reference_refusal(stored: StoredRubric, rows: Sequence[Row]) -> InvalidArgument | None:
    """INVALID_ARGUMENT naming the first programmatic criterion that cannot score a reference answer of ``rows``
    (a ``json_field`` whose references are not JSON, a ``numeric`` whose references hold no number): found
    before any answer is generated or judged, at no cost. None when each scores every reference."""
    rubric = stored.parsed()
    for i, criterion in enumerate(rubric.criteria):
        if criterion.is_judge:
            continue
        for j, row in enumerate(rows):
            try:
                score(criterion, Row(row.input, row.reference, row.reference, row.tools), j)
            except GradeError as err:
                return InvalidArgument(
                    f"the rubric {rubric.name!r} cannot score this eval set: rubric.criteria[{i}] {criterion.name!r} "
                    f"({criterion.kind}) cannot score row {j} of the eval references: {err.reason}",
                    field=f"rubric.criteria[{i}]",
                )
    return None


def refusal(shown: dict[str, Any]) -> InvalidArgument | None:
    """The report's refusal (``Validation.refusal``): INVALID_ARGUMENT naming the first criterion with a problem."""
    refused = shown.get("refusal")
    return InvalidArgument(refused["message"], field=refused["field"]) if refused else None


def summary(shown: dict[str, Any]) -> str:
    """One line for a run's events: the totals and each criterion's means."""
    criteria = "; ".join(
        f"{c['name']} {c['reference_mean']:.2f} vs {c['base_mean']:.2f}" + (" (problem)" if c["problem"] else "")
        for c in shown["criteria"]
    )
    verdict = "ok" if shown["ok"] else "refused"
    return (f"rubric {shown['rubric_name']} v{shown['rubric_version']} checked on {shown['rows']} eval rows "
            f"({verdict}): references {shown['reference_total']:.2f}, base {shown['base_total']:.2f}; "
            f"{criteria}")  # fmt: skip
