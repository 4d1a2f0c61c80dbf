"""Checking a rubric (``rubric.py``) on the eval set before a run starts.

One answer is scored on one programmatic criterion by ``recipes/rubric_scores.py`` (``score``, ``Row``,
``GradeError``; the SFT recipe scores its mid-training evals with it too). Judge criteria are scored by
the teacher service (``JudgeAnswers``, see ``judging.py``), whose scores come back here as ``Judged``.

``validate`` scores the eval references (which should score high) and the base model's answers
(which usually score lower) on every criterion: a criterion that cannot score a row, or gives
every row of both sets the same score, makes ``Validation.refusal()`` an INVALID_ARGUMENT naming
it (``rubric.criteria[1]``). ``Validation.to_dict()`` is what the user is shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidArgument
from services.trainer.recipes.rubric_scores import MAX_ANSWER_CHARS, GradeError, Row, Score, Scored, score, weighted
from services.trainer.rubric import Criterion, Rubric

# What the trainer's side reads from here (defined with the scoring, under recipes/).
__all__ = ["MAX_ANSWER_CHARS", "CriterionCheck", "GradeError", "Judged", "Row", "Score", "Scored", "Validation",
           "answered", "grade", "score", "total", "validate"]  # fmt: skip


@dataclass
class Judged:
    """One judge criterion's scores on the eval references and on the base answers, and what the calls cost."""

    references: list[Scored]
    base: list[Scored]
    usage: dict[str, float] = field(default_factory=dict)


def answered(rows: Sequence[Row], base_answers: Sequence[str]) -> tuple[list[Row], list[Row]]:
    if len(rows) != len(base_answers):
        raise ValueError(f"{len(rows)} eval rows but {len(base_answers)} base answers")
    references = [Row(r.input, r.reference, r.reference, r.tools) for r in rows]
    return references, [Row(r.input, r.reference, a, r.tools) for r, a in zip(rows, base_answers, strict=True)]


# -- scoring a set, weighted totals, validation -------------------------------------------------


def grade(
    rubric: Rubric, rows: Sequence[Row], judged: Mapping[str, Sequence[Scored]] | None = None
) -> list[list[Scored]]:
    """Per criterion (in the rubric's order), every row's score or ``GradeError``; judge criteria from ``judged``."""
    out: list[list[Scored]] = []
    for criterion in rubric.criteria:
        if criterion.is_judge:
            scores = list((judged or {}).get(criterion.name, ()))
            if len(scores) != len(rows):
                raise ValueError(f"judge criterion {criterion.name!r}: {len(scores)} scores for {len(rows)} rows")
            out.append(scores)
            continue
        column: list[Scored] = []
        for i, row in enumerate(rows):
            try:
                column.append(score(criterion, row, i))
            except GradeError as err:
                column.append(err)
        out.append(column)
    return out


def total(rubric: Rubric, scores: Sequence[float]) -> float:
    """The weighted total of one score per criterion (in the rubric's order): sum(weight x score) / sum(weight)."""
    return weighted(rubric.criteria, scores)


def _mean(scores: Sequence[Scored]) -> float:
    values = [s for s in scores if isinstance(s, float)]
    return sum(values) / len(values) if values else 0.0


@dataclass
class CriterionCheck:
    index: int
    criterion: Criterion
    references: list[Scored]
    base: list[Scored]

    @property
    def failures(self) -> list[tuple[str, Exception]]:
        return [(which, s) for which, scores in (("eval references", self.references), ("base answers", self.base))
                for s in scores if isinstance(s, Exception)]  # fmt: skip

    @property
    def problem(self) -> str:
        """Why this criterion cannot be used on this eval set ("" when it can)."""
        if failures := self.failures:
            which, first = failures[0]
            why = first.reason if isinstance(first, GradeError) else str(first)
            row = f"row {first.row}" if isinstance(first, GradeError) else "a row"
            return f"cannot score {row} of the {which} ({len(failures)} rows in all): {why}"
        values = {round(s, 9) for s in (*self.references, *self.base) if isinstance(s, float)}
        if len(values) == 1:
            return (
                f"gives every row the same score ({values.pop():g}) on the eval references and the base "
                "answers alike, so it cannot tell better answers from worse: change it, or leave it out"
            )
        return ""

    def to_dict(self) -> dict[str, Any]:
        reference_mean, base_mean = _mean(self.references), _mean(self.base)
        return {"name": self.criterion.name, "kind": self.criterion.kind, "weight": self.criterion.weight,
                "reference_mean": reference_mean, "base_mean": base_mean, "spread": reference_mean - base_mean,
                "failures": len(self.failures), "problem": self.problem}  # fmt: skip


@dataclass
class Validation:
    rubric: Rubric
    rows: int
    checks: list[CriterionCheck]
    judge_usage: dict[str, float] = field(default_factory=dict)

    @property
    def reference_total(self) -> float:
        return total(self.rubric, [_mean(c.references) for c in self.checks])

    @property
    def base_total(self) -> float:
        return total(self.rubric, [_mean(c.base) for c in self.checks])

    def refusal(self) -> InvalidArgument | None:
        """INVALID_ARGUMENT naming the first criterion with a problem, saying every one's; None when all are fine."""
        bad = [c for c in self.checks if c.problem]
        if not bad:
            return None
        said = "; ".join(f"rubric.criteria[{c.index}] {c.criterion.name!r} ({c.criterion.kind}) {c.problem}"
                         for c in bad)  # fmt: skip
        return InvalidArgument(f"the rubric {self.rubric.name!r} cannot score this eval set: {said}",
                               field=f"rubric.criteria[{bad[0].index}]")  # fmt: skip

    def check(self) -> None:
        if (refusal := self.refusal()) is not None:
            raise refusal

    def to_dict(self) -> dict[str, Any]:
        """What the user is shown before the run starts."""
        warnings = [f"{c.criterion.name!r}: the eval references score lower than the base answers"
                    for c in self.checks if _mean(c.references) < _mean(c.base)]  # fmt: skip
        return {"rubric": self.rubric.name, "rows": self.rows, "criteria": [c.to_dict() for c in self.checks],
                "reference_total": self.reference_total, "base_total": self.base_total,
                "ok": self.refusal() is None, "warnings": warnings, "judge_usage": self.judge_usage}  # fmt: skip


def validate(rubric: Rubric, rows: Sequence[Row], base_answers: Sequence[str],
             judged: Mapping[str, Judged] | None = None) -> Validation:  # fmt: skip
    """Score the eval references and the base model's answers on every criterion (judge criteria from ``judged``,
    see ``judge_all``). ``Validation.refusal()`` says whether the rubric can be used; ``to_dict()`` shows it."""
    if not rows:
        raise InvalidArgument("the eval set has no rows to check the rubric on", field="rubric")
    references, base = answered(rows, base_answers)
    judged = judged or {}
    on_references = grade(rubric, references, {name: j.references for name, j in judged.items()})
    on_base = grade(rubric, base, {name: j.base for name, j in judged.items()})
    usage: dict[str, float] = {}
    for j in judged.values():
        for name, value in j.usage.items():
            usage[name] = usage.get(name, 0) + value
    checks = [CriterionCheck(i, c, on_references[i], on_base[i]) for i, c in enumerate(rubric.criteria)]
    return Validation(rubric, len(rows), checks, usage)
