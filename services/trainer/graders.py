"""Scoring answers with a rubric (``rubric.py``), and checking a rubric on the eval set before a run starts.

``score(criterion, row)`` scores one answer on one programmatic criterion, in [0, 1]. A row the
criterion cannot score (its reference is not JSON for ``json_field``, has no number for
``numeric``, its pattern ran past its timeout...) raises ``GradeError`` naming the criterion and
the row; a poor answer is a low score, never an error. An answer over ``MAX_ANSWER_CHARS``
scores 0.

Judge criteria are scored by the teacher service (``JudgeAnswers``, see ``judging.py``), whose
scores come back here as ``Judged``.

``validate`` scores the eval references (which should score high) and the base model's answers
(which usually score lower) on every criterion: a criterion that cannot score a row, or gives
every row of both sets the same score, makes ``Validation.refusal()`` an INVALID_ARGUMENT naming
it (``rubric.criteria[1]``). ``Validation.to_dict()`` is what the user is shown.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz import fuzz, utils

from services.common import tool_calls
from services.common.errors import InvalidArgument
from services.trainer.recipes import tool_rewards
from services.trainer.rubric import Criterion, Rubric
from services.trainer.rubric_kinds import (
    REGEX_TIMEOUT_S,
    ExactMatch,
    JsonField,
    JsonSchema,
    Numeric,
    Regex,
    Similarity,
    ToolCall,
)

MAX_ANSWER_CHARS = 65_536
_NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")

Score = float  # in [0, 1]
Scored = float | Exception  # a score, or the GradeError that says why there is none


@dataclass(frozen=True)
class Row:
    input: str = ""
    reference: str = ""
    answer: str = ""
    # The tools the row offers (canonical tools, a list or its JSON text): tool_call checks calls against them.
    tools: Any = None


class GradeError(Exception):
    """A criterion cannot score a row: ``criterion`` (its name), ``row`` (the row's index), ``reason``."""

    def __init__(self, criterion: str, row: int, reason: str) -> None:
        super().__init__(f"criterion {criterion!r} cannot score row {row}: {reason}")
        self.criterion, self.row, self.reason = criterion, row, reason


class _Unscorable(Exception):
    pass


def score(criterion: Criterion, row: Row, index: int = 0) -> Score:
    """``row``'s answer scored on a programmatic ``criterion``, in [0, 1]; ``GradeError`` when it cannot be."""
    grader = _GRADERS.get(type(criterion.params))
    if grader is None:
        raise ValueError(f"{criterion.name!r} is a judge criterion: the teacher scores it (judge_request)")
    try:
        return float(grader(criterion.params, row))
    except _Unscorable as err:
        raise GradeError(criterion.name, index, str(err)) from None


def _reference(row: Row) -> str:
    if not row.reference.strip():
        raise _Unscorable("the row has no reference answer to compare with")
    if len(row.reference) > MAX_ANSWER_CHARS:
        raise _Unscorable(f"its reference is {len(row.reference)} characters long, over {MAX_ANSWER_CHARS}")
    return row.reference


def _too_long(row: Row) -> bool:
    return len(row.answer) > MAX_ANSWER_CHARS


def _exact(p: ExactMatch, row: Row) -> float:
    def normal(text: str) -> str:
        text = unicodedata.normalize("NFKC", text)
        if p.ignore_punctuation:
            text = "".join(ch for ch in text if not unicodedata.category(ch).startswith(("P", "S")))
        if p.collapse_whitespace:
            text = " ".join(text.split())
        return text.casefold() if p.ignore_case else text

    reference = _reference(row)
    return 0.0 if _too_long(row) else float(normal(row.answer) == normal(reference))


def _regex(p: Regex, row: Row) -> float:
    if _too_long(row):
        return 0.0
    match = p.compiled.fullmatch if p.full_match else p.compiled.search
    try:
        return float(match(row.answer, timeout=REGEX_TIMEOUT_S) is not None)
    except TimeoutError:
        raise _Unscorable(f"the pattern ran past {REGEX_TIMEOUT_S} s on the answer: simplify it (nested repeats "
                          "such as (a+)+ backtrack without end)") from None  # fmt: skip


def _json_schema(p: JsonSchema, row: Row) -> float:
    value, error = tool_calls.load_json(row.answer) if not _too_long(row) else (None, "too_long")
    if error:
        return 0.0
    try:
        return float(next(iter(p.validator.iter_errors(value)), None) is None)
    except TimeoutError:
        raise _Unscorable(f"a pattern of the schema ran past {REGEX_TIMEOUT_S} s on the answer: simplify it") from None
    except Exception as err:  # a $ref it cannot resolve, ...: the schema's fault, not the answer's
        raise _Unscorable(f"the schema cannot be applied ({type(err).__name__}): {str(err)[:200]}") from None


def _field(value: Any, parts: Sequence[str]) -> tuple[bool, Any]:
    for part in parts:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False, None
    return True, value


def _canonical(value: Any, fold: bool) -> str:
    def ints(v: Any) -> Any:
        if type(v) is float and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: ints(x) for k, x in v.items()}
        return [ints(x) for x in v] if isinstance(v, list) else v

    return json.dumps(tool_calls.normalise(value) if fold else ints(value), sort_keys=True)


def _json_field(p: JsonField, row: Row) -> float:
    reference, error = tool_calls.load_json(_reference(row))
    if error:
        raise _Unscorable(f"its reference is not JSON ({error.replace('_', ' ')}), so it has no {p.path!r}")
    found, wanted = _field(reference, p.parts)
    if not found:
        raise _Unscorable(f"its reference has no field {p.path!r}")
    answer, error = tool_calls.load_json(row.answer) if not _too_long(row) else (None, "too_long")
    found, got = _field(answer, p.parts) if not error else (False, None)
    return float(found and _canonical(got, p.ignore_case) == _canonical(wanted, p.ignore_case))


def _number(text: str, extract: str) -> float | None:
    if extract == "whole":
        found = [text.strip()] if _NUMBER.fullmatch(text.strip()) else []
    else:
        found = _NUMBER.findall(text[:MAX_ANSWER_CHARS])
    if not found:
        return None
    value = float(found[0 if extract == "first" else -1].replace(",", ""))
    return value if math.isfinite(value) else None


def _numeric(p: Numeric, row: Row) -> float:
    wanted = _number(_reference(row), p.extract)
    if wanted is None:
        raise _Unscorable(f"its reference has no number to compare with (extract: {p.extract})")
    got = _number(row.answer, p.extract)
    return float(got is not None and abs(got - wanted) <= max(p.absolute, p.relative * abs(wanted)))


def _similarity(p: Similarity, row: Row) -> float:
    reference = _reference(row)
    scorer = getattr(fuzz, p.metric)
    answer = row.answer[:MAX_ANSWER_CHARS]
    return float(scorer(answer, reference, processor=utils.default_process if p.ignore_case else None)) / 100.0


def _wanted_calls(reference: str) -> list[dict[str, Any]]:
    """The reference's calls: a JSON list of {"name", "arguments"}, or an answer with <tool_call> blocks (or none)."""
    if reference.lstrip().startswith("["):
        value, error = tool_calls.load_json(reference)
        if error or not isinstance(value, list) or len(tool_calls.expected_calls(value)) != len(value):
            raise _Unscorable('its reference is not a list of calls ({"name", "arguments"}) nor an answer')
        return value
    parsed = tool_calls.parse_output(reference)
    if parsed.error:
        raise _Unscorable(f"its reference's tool calls do not parse ({parsed.error})")
    return [{"name": call.name, "arguments": call.arguments} for call in parsed.calls]


def _tool_call(p: ToolCall, row: Row) -> float:
    wanted = _wanted_calls(_reference(row))
    tools = tool_calls.tools_by_name(row.tools) if row.tools else {}
    if row.tools and not tools:
        raise _Unscorable("its tools are not a list of tools ({name, description, parameters})")
    parsed = tool_calls.parse_output(row.answer)
    if tools and p.check_schema:  # the tool-calling recipe's own "correct": matching and schema-valid calls
        return tool_rewards.score_parsed([parsed], [wanted], [list(tools.values())])["correct_rate"]
    expected, made = tool_calls.expected_calls(wanted), parsed.calls if parsed.ok else []
    if not expected:
        return float(parsed.ok and not parsed.calls)
    return float(parsed.ok and len(made) == len(expected) == tool_calls.matched(made, expected, tool_calls.same_call))


_GRADERS: dict[type, Callable[[Any, Row], float]] = {
    ExactMatch: _exact, Regex: _regex, JsonSchema: _json_schema, JsonField: _json_field, Numeric: _numeric,
    Similarity: _similarity, ToolCall: _tool_call,
}  # fmt: skip


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
    weights = [c.weight for c in rubric.criteria]
    return sum(w * s for w, s in zip(weights, scores, strict=True)) / sum(weights)


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
