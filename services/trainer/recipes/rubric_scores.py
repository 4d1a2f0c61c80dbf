"""Scoring one answer on one programmatic rubric criterion (``services/trainer/rubric.py``), in [0, 1].

``score(criterion, row)`` scores a row's answer; a row the criterion cannot score (its reference is
not JSON for ``json_field``, has no number for ``numeric``, its pattern ran past its timeout...)
raises ``GradeError`` naming the criterion and the row; a poor answer is a low score, never an
error. An answer over ``MAX_ANSWER_CHARS`` scores 0. ``weighted`` is a row's total over some
criteria.

Here, under recipes/, because both sides use it: the trainer service checks a rubric before a run
trains (``graders.validate``), and the SFT recipe scores its generated answers at each mid-training
eval (``rubric_evals.py``). Judge criteria are the teacher service's (``judging.py``). Light: no
torch, transformers or ray.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rapidfuzz import fuzz, utils

from services.common import tool_calls
from services.trainer.recipes import tool_rewards
from services.trainer.rubric import Criterion
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


def weighted(criteria: Sequence[Criterion], scores: Sequence[float]) -> float:
    """The weighted total of one score per criterion: sum(weight x score) / sum(weight)."""
    return sum(c.weight * s for c, s in zip(criteria, scores, strict=True)) / sum(c.weight for c in criteria)
