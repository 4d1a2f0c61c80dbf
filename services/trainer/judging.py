"""Judge criteria scored through the teacher service's ``JudgeAnswers``, under the rubric's fixed prompt.

``judge_request`` builds the call for a judge criterion on some rows, ``judge_scores`` reads its
answer back onto [0, 1] (a row the judge gave no score is a ``GradeError``), and ``judge_all``
does both for every judge criterion of a rubric on the eval references and the base model's
answers, giving ``graders.validate`` its ``Judged`` scores. The call itself is the caller's
(``Peers.judge`` for a tenant), so the teacher's limits and cost accounting apply.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from distillery.teacher.v1 import teacher_pb2
from services.trainer.graders import MAX_ANSWER_CHARS, GradeError, Judged, Row, Scored, answered
from services.trainer.rubric import Criterion, Rubric
from services.trainer.rubric_kinds import JUDGE_USER_TEMPLATE, Judge

# Rows per JudgeAnswers call (each row is one judge request; a call must end within the RPC deadline).
JUDGE_BATCH_ROWS = 8

JudgeCall = Callable[[teacher_pb2.JudgeAnswersRequest], Awaitable[teacher_pb2.JudgeAnswersResponse]]


def judge_request(criterion: Criterion, rows: Sequence[Row]) -> teacher_pb2.JudgeAnswersRequest:
    """The JudgeAnswers call for a judge ``criterion`` on ``rows``, under the rubric's fixed prompt."""
    p: Judge = criterion.params
    return teacher_pb2.JudgeAnswersRequest(
        teacher=p.judge, system_prompt=p.system_prompt(), user_template=JUDGE_USER_TEMPLATE,
        scale_min=p.scale[0], scale_max=p.scale[1],
        rows=[teacher_pb2.JudgeRow(input=r.input[:MAX_ANSWER_CHARS], reference=r.reference[:MAX_ANSWER_CHARS],
                                   answer=r.answer[:MAX_ANSWER_CHARS]) for r in rows],
    )  # fmt: skip


def judge_scores(criterion: Criterion, response: teacher_pb2.JudgeAnswersResponse, first: int = 0) -> list[Scored]:
    """The judge's scores on [0, 1], in row order (row ``first`` onwards); a ``GradeError`` for each row without one."""
    low, high = criterion.params.scale
    out: list[Scored] = []
    for i, judged in enumerate(response.scores):
        if judged.error:
            out.append(GradeError(criterion.name, first + i, f"the judge gave no score ({judged.error}): "
                                  f"{judged.message}"))  # fmt: skip
        else:
            out.append(min(1.0, max(0.0, (judged.score - low) / (high - low))))
    return out


async def judge_rows(criterion: Criterion, rows: Sequence[Row], call: JudgeCall,
                     usage: dict[str, float]) -> list[Scored]:  # fmt: skip
    """Every row scored by the judge, ``JUDGE_BATCH_ROWS`` a call; each call's usage added to ``usage``."""
    out: list[Scored] = []
    for start in range(0, len(rows), JUDGE_BATCH_ROWS):
        response = await call(judge_request(criterion, rows[start : start + JUDGE_BATCH_ROWS]))
        out += judge_scores(criterion, response, start)
        for name in ("input_tokens", "output_tokens", "requests", "estimated_cost_usd"):
            usage[name] = usage.get(name, 0) + getattr(response.usage, name)
    return out


async def judge_all(rubric: Rubric, rows: Sequence[Row], base_answers: Sequence[str],
                    call: JudgeCall) -> dict[str, Judged]:  # fmt: skip
    """Every judge criterion on the eval references (``rows``' references as answers) and the base answers."""
    references, base = answered(rows, base_answers)
    out: dict[str, Judged] = {}
    for _, criterion in rubric.judges:
        usage: dict[str, float] = {}
        on_references = await judge_rows(criterion, references, call, usage)
        out[criterion.name] = Judged(on_references, await judge_rows(criterion, base, call, usage), usage)
    return out
