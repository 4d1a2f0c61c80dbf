"""JudgeAnswers: a teacher model scores answers on one rubric criterion, one call per row.

The caller (the trainer, for a rubric's judge criterion) gives the judge's prompt, fixed and
recorded with its rubric: a system prompt, and a user template in which ``{input}``,
``{reference}`` and ``{answer}`` are replaced by each row's texts in one pass (a row's text
that holds a placeholder stays as it is). Each row is one request through the provider's
``Limiter``, shared with the generation jobs, with a job row's retries (``engine.generate``);
the token usage of all of them is returned and ``record``ed per tenant, as DescribeTool's is.

``read_score`` reads the judge's reply: a JSON object with a "score" (as asked, fenced or
not), a bare number, or a score in words ("Score: 4", "4/5", "4 out of 5"). A reply with no
score, or with several different candidates and none labelled, is the row's error
``unparseable_reply``; a score off the scale is ``out_of_scale``: never a silent 0. A row the
provider could not answer (refused, input too long, retries exhausted) is that row's error; a
key refused or an account that cannot pay stops the call with an RPC error, as DescribeTool's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from psycopg_pool import AsyncConnectionPool

from services.common.errors import InvalidArgument, Unavailable
from services.teacher import engine, providers
from services.teacher.keys import KeyStore, close_client
from services.teacher.limits import Limiter
from services.teacher.providers.base import Request, scrub
from services.teacher.tool_descriptions import _teacher_error

MAX_ROWS = 256
MAX_PROMPT_CHARS = 16_000
MAX_SCALE = 100
MAX_OUTPUT_TOKENS = 512
# The reply sent back per row is cut to this; the score is read from the whole of it (up to MAX_READ_CHARS).
MAX_REPLY_CHARS = 4000
MAX_READ_CHARS = 64 * 1024
PLACEHOLDERS = ("input", "reference", "answer")
RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reason": {"type": "string", "description": "why the answer gets its score, in one or two sentences"},
        "score": {"type": "number", "description": "the score on the scale the instructions give"},
    },
    "required": ["reason", "score"],
    "additionalProperties": False,
}

_PLACEHOLDER = re.compile(r"\{(input|reference|answer)\}")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*)\n\s*```$", re.DOTALL)
_NUMBER = r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)"
_LABELLED = re.compile(rf"\b(?:score|rating|grade)[\s\"'*:=]*(?:is|of)?[\s\"'*:=]*({_NUMBER})", re.IGNORECASE)
_OUT_OF = re.compile(rf"({_NUMBER})\s*(?:/|out of)\s*({_NUMBER})", re.IGNORECASE)
_ANY_NUMBER = re.compile(_NUMBER)


@dataclass(frozen=True)
class Judgement:
    """One row: its score on the scale (None when it has none), the reply, and why not (code, words)."""

    score: float | None
    reply: str = ""
    error: str = ""
    message: str = ""


@dataclass
class Judged:
    rows: list[Judgement]
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0  # tries sent to the provider
    billed: bool = True
    failed: int = field(default=0)


def check_request(request: Any) -> None:
    """The prompt parts and the scale, or INVALID_ARGUMENT naming the field (the rows are bounded by protoconv)."""
    if not request.system_prompt.strip():
        raise InvalidArgument("system_prompt is empty: give the judge's instructions (the criterion and the scale)",
                              field="system_prompt")  # fmt: skip
    for name in ("system_prompt", "user_template"):
        if len(getattr(request, name)) > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"{name} is over {MAX_PROMPT_CHARS} characters: keep the judge's prompt short",
                                  field=name)  # fmt: skip
    if "{answer}" not in request.user_template:
        raise InvalidArgument("user_template has no {answer}: the judge must see the answer it scores "
                              "({input} and {reference} may be there too)", field="user_template")  # fmt: skip
    if not 0 <= request.scale_min < request.scale_max <= MAX_SCALE:
        raise InvalidArgument(f"the scale {request.scale_min} to {request.scale_max} is not one: give whole "
                              f"numbers with 0 <= scale_min < scale_max <= {MAX_SCALE} (e.g. 1 to 5)",
                              field="scale_max")  # fmt: skip
    if not request.rows:
        raise InvalidArgument("rows is empty: give the answers to score", field="rows")
    if len(request.rows) > MAX_ROWS:
        raise InvalidArgument(f"rows has {len(request.rows)} entries: send at most {MAX_ROWS} a call", field="rows")


def fill(template: str, row: Any) -> str:
    """``template`` with each placeholder replaced by the row's text, in one pass."""
    return _PLACEHOLDER.sub(lambda m: str(getattr(row, m.group(1))), template)


def read_score(text: str, low: float, high: float) -> tuple[float | None, str, str]:
    """(score, "", "") or (None, code, message) from a judge's reply (module docstring)."""
    text = text.strip()[:MAX_READ_CHARS]
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    is_json, score = _from_json(text)
    if not is_json:
        score = _from_words(text)
    if score is None:
        return None, "unparseable_reply", f"no score in the judge's reply: {text[:120]!r}"
    if not low <= score <= high:
        return None, "out_of_scale", f"the judge gave {score:g}, off the scale {low:g} to {high:g}"
    return score, "", ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str) and re.fullmatch(rf"\s*{_NUMBER}\s*", value):
        return float(value)
    return None


def _from_json(text: str) -> tuple[bool, float | None]:
    """(True, score or None) when the reply is JSON (or holds one JSON object); (False, None) when it is not."""
    start, end = text.find("{"), text.rfind("}")
    candidates = [text] + ([text[start : end + 1]] if 0 <= start < end else [])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            found = {k.lower(): v for k, v in value.items() if isinstance(k, str)}
            key = next((k for k in ("score", "rating", "grade") if k in found), None)
            return True, None if key is None else _number(found[key])
        return True, _number(value)
    return False, None


def _from_words(text: str) -> float | None:
    """A labelled score ("Score: 4"), else "4/5" or "4 out of 5" with no other number about, else a short reply's
    one number; None when there are two candidates (which one the judge meant would be a guess)."""
    labelled = {float(m.group(1)) for m in _LABELLED.finditer(text)}
    if labelled:
        return labelled.pop() if len(labelled) == 1 else None
    pairs = [(float(m.group(1)), float(m.group(2))) for m in _OUT_OF.finditer(text)]
    numbers = {float(n) for n in _ANY_NUMBER.findall(text)}
    if pairs:
        scores = {score for score, _ in pairs}
        ok = len(scores) == 1 and numbers <= scores | {scale for _, scale in pairs}
        return scores.pop() if ok else None
    return numbers.pop() if len(numbers) == 1 and len(text) <= 200 else None


async def judge(
    keys: KeyStore,
    limiters: Mapping[str, Limiter],
    tenant_id: str,
    request: Any,
    *,
    attempts: int,
    max_backoff_s: float,
) -> Judged:
    """The whole JudgeAnswers call: check it, pick the tenant's credentials, score every row."""
    check_request(request)
    provider, model = providers.split_teacher(request.teacher)
    credentials = await keys.credentials(tenant_id, provider)
    low, high = float(request.scale_min), float(request.scale_max)
    tasks = [
        engine.Task(i, Request(
            model=model,
            messages=[{"role": "system", "content": request.system_prompt},
                      {"role": "user", "content": fill(request.user_template, row)}],
            temperature=0.0, max_output_tokens=MAX_OUTPUT_TOKENS, response_schema=RESPONSE_SCHEMA,
        ))
        for i, row in enumerate(request.rows)
    ]  # fmt: skip
    judged = Judged([Judgement(None)] * len(tasks), billed=credentials.billed)

    async def keep(outcome: engine.Outcome) -> None:
        judged.requests += outcome.attempts
        completion = outcome.completion
        if completion is None:
            said = scrub(outcome.message, credentials.api_key)
            kind = f"{outcome.error_kind}, {outcome.attempts} tries" if outcome.error_kind else outcome.code
            judged.rows[outcome.row] = Judgement(None, "", outcome.code, f"no reply ({kind}): {said}")
            return
        judged.input_tokens += completion.input_tokens
        judged.output_tokens += completion.output_tokens
        score, code, message = read_score(completion.text, low, high)
        if code == "unparseable_reply" and completion.finish_reason == "length":
            message = f"the judge's reply was cut off after {completion.output_tokens} tokens: {message}"
        judged.rows[outcome.row] = Judgement(score, completion.text[:MAX_REPLY_CHARS], code, message)

    adapter = providers.PROVIDERS[provider]
    client = adapter.connect(credentials)
    try:
        await engine.generate(tasks, partial(adapter.complete, client), limiters[provider], keep,
                              max_attempts=attempts, max_backoff_s=max_backoff_s)  # fmt: skip
    except engine.JobStopped as stopped:
        raise _teacher_error(provider, credentials, stopped.error) from None
    finally:
        await close_client(adapter, client)
    if all(row.error == engine.RETRIES_EXHAUSTED for row in judged.rows):  # the judge is down, not the rows
        raise Unavailable(f"the {provider} judge did not answer: {judged.rows[0].message}; try again shortly")
    judged.failed = sum(row.score is None for row in judged.rows)
    return judged


async def record(pool: AsyncConnectionPool, tenant_id: str, teacher: str, judged: Judged) -> None:
    """Keep the call's token usage, as DescribeTool keeps its: what the tenant's judging cost."""
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO judge_calls (tenant_id, teacher, rows_total, rows_failed, requests, input_tokens,"
            " output_tokens, billed) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (tenant_id, teacher, len(judged.rows), judged.failed, judged.requests, judged.input_tokens,
             judged.output_tokens, judged.billed),
        )  # fmt: skip
