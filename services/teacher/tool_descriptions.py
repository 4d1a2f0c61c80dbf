"""Plain-language tools: a description in words -> a canonical tool schema, written by the teacher.

``describe`` asks the teacher for structured output ({"name", "description",
"parameters"}, ``RESPONSE_SCHEMA``) under ``SYSTEM_PROMPT``, which spells out the
canonical shape, then puts the answer through ``canonical_tools.check_tool`` exactly as an
imported tool (source ``TOOL_SOURCE_PLAIN_LANGUAGE``). What the teacher got wrong is a
violation in the report, not an RPC error: an untyped property is ``untyped_property``,
an answer that is not JSON ``unparseable_answer``, one cut off ``answer_too_long``, a
refusal ``teacher_refused``.

RPC errors are for what the caller must change: the description (empty, too long),
the teacher name, the key (refused, none), or a provider that did not answer.

The call goes through the provider's ``Limiter``, shared with the generation jobs, with a job
row's retries (``engine.complete_one``); its token usage is returned and ``record``ed per tenant.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from psycopg_pool import AsyncConnectionPool

from services.common.canonical_tools import CanonicalTool, check_tool
from services.common.errors import DistilleryError, FailedPrecondition, InvalidArgument, Unavailable
from services.common.reports import Report
from services.common.tool_schemas import PLAIN_LANGUAGE
from services.teacher import engine, providers
from services.teacher.keys import KeyStore, close_client, refused_key
from services.teacher.limits import Limiter
from services.teacher.providers.base import Completion, Credentials, ProviderError, Request, scrub

MAX_DESCRIPTION_CHARS = 8000
MAX_OUTPUT_TOKENS = 2048
# An endpoint may ignore max_output_tokens: answers beyond this are not read.
MAX_ANSWER_CHARS = 256 * 1024
# The teacher's own answer is sent back beside its violations only up to this nesting
# (a Struct takes two protobuf levels per JSON level, and protobuf parses at most 100).
MAX_ECHO_DEPTH = 24

SYSTEM_PROMPT = """\
You turn a plain-language description of a tool (a function an assistant can call) into its definition.
Answer with one JSON object and nothing else:
- "name": a short snake_case identifier of letters, digits, _ and - (at most 64), e.g. "get_weather";
- "description": one or two sentences saying what the tool does and when to call it;
- "parameters": a JSON Schema object for the tool's arguments, shaped
  {"type": "object", "properties": {...}, "required": [...], "additionalProperties": false}.
Rules for "parameters":
- every property has a "type" ("string", "integer", "number", "boolean", "array" or "object") and a "description";
- an array has "items" with a type; a nested object has its own "properties", "required" and
  "additionalProperties": false;
- when the text lists the allowed values of an argument, give them as an "enum";
- formats and bounds the text states go in "format" (e.g. "date"), "minimum", "maximum";
- "required" lists the arguments the text says are needed; optional ones are left out of it;
- add no argument the text does not imply.
"""

RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "snake_case tool name"},
        "description": {"type": "string", "description": "what the tool does and when to call it"},
        "parameters": {"type": "object", "description": "JSON Schema object of the arguments"},
    },
    "required": ["name", "description", "parameters"],
    "additionalProperties": False,
}

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*)\n\s*```$", re.DOTALL)


@dataclass(frozen=True)
class Described:
    """The canonical tool (None when the report has violations) and what the teacher answered."""

    tool: CanonicalTool | None
    report: Report
    # The teacher's answer as parsed (shown next to the violations); None when it was not a JSON object.
    answer: dict[str, Any] | None
    input_tokens: int = 0
    output_tokens: int = 0
    billed: bool = True
    requests: int = 0  # tries sent to the provider


async def describe(
    keys: KeyStore,
    limiters: Mapping[str, Limiter],
    tenant_id: str,
    teacher: str,
    description: str,
    *,
    attempts: int,
    max_backoff_s: float,
) -> Described:
    """The whole DescribeTool call: check the request, pick the tenant's credentials, ask the teacher
    through the provider's limiter (shared with the generation jobs)."""
    text = clean_description(description)
    provider, model = providers.split_teacher(teacher)
    credentials = await keys.credentials(tenant_id, provider)
    return await describe_tool(
        credentials, provider, model, text, limiters[provider], attempts=attempts, max_backoff_s=max_backoff_s
    )


async def record(pool: AsyncConnectionPool, tenant_id: str, teacher: str, described: Described) -> None:
    """Keep the call's token usage, as a job keeps its rows': what the tenant's descriptions cost."""
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO tool_descriptions (tenant_id, teacher, requests, input_tokens, output_tokens, billed, ok)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (tenant_id, teacher, described.requests, described.input_tokens, described.output_tokens,
             described.billed, described.tool is not None),
        )  # fmt: skip


def clean_description(description: str) -> str:
    text = description.strip()
    if not text:
        raise InvalidArgument(
            "the description is empty: say in words what the tool does, its arguments (with their types and "
            "allowed values) and which are required",
            field="description",
        )
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise InvalidArgument(
            f"the description is {len(text)} characters long, over the limit of {MAX_DESCRIPTION_CHARS}: describe "
            "one tool, briefly",
            field="description",
        )
    return text


async def describe_tool(
    credentials: Credentials,
    provider: str,
    model: str,
    description: str,
    limiter: Limiter,
    *,
    attempts: int = 1,
    max_backoff_s: float = 0.0,
) -> Described:
    """Ask ``provider:model`` for the tool ``description`` describes, and check its answer like an imported tool."""
    request = Request(
        model=model,
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": description}],
        temperature=0.0,
        max_output_tokens=MAX_OUTPUT_TOKENS,
        response_schema=RESPONSE_SCHEMA,
    )
    adapter = providers.PROVIDERS[provider]
    client = adapter.connect(credentials)
    try:
        outcome = await engine.complete_one(request, partial(adapter.complete, client), limiter,
                                            max_attempts=attempts, max_backoff_s=max_backoff_s)  # fmt: skip
    except ProviderError as err:
        raise _teacher_error(provider, credentials, err) from None
    finally:
        await close_client(adapter, client)
    completion = outcome.completion
    if completion is None:
        if outcome.error_kind != "refused":
            raise _teacher_error(provider, credentials, ProviderError(outcome.error_kind, outcome.message))
        report = Report(rows=1)
        said = scrub(outcome.message, credentials.api_key)
        report.add(0, "", "teacher_refused", f"the teacher declined to answer: {said}",
                   "describe the tool in other words, or use another teacher", entry="tool")  # fmt: skip
        return Described(None, report, None, billed=credentials.billed, requests=outcome.attempts)
    answer, report = read_answer(completion)
    tool = None
    if answer is not None:  # check_tool reports a missing or mistyped name, description or parameters
        name: Any = answer.get("name")
        text: Any = answer.get("description")
        tool, report = check_tool(name, text, answer.get("parameters"), source=PLAIN_LANGUAGE)
        if tool is None and _depth(answer) > MAX_ECHO_DEPTH:
            answer = None  # the violations say what is wrong; the answer itself cannot travel
    return Described(tool, report, answer, completion.input_tokens, completion.output_tokens, credentials.billed,
                     outcome.attempts)  # fmt: skip


def read_answer(completion: Completion) -> tuple[dict[str, Any] | None, Report]:
    """The teacher's answer as a JSON object, or None and a report saying why not."""
    report = Report(rows=1)
    text = completion.text.strip()
    fenced = _FENCE.match(text)  # some models wrap JSON in a Markdown fence even when asked not to
    if fenced:
        text = fenced.group(1).strip()
    if len(text) > MAX_ANSWER_CHARS:
        report.add(0, "", "answer_too_long", f"the teacher's answer is {len(text)} characters, over {MAX_ANSWER_CHARS}",
                   "describe fewer arguments, or split the tool in two", entry="tool")  # fmt: skip
        return None, report
    try:
        answer = json.loads(text)
    except RecursionError:
        report.add(0, "", "unparseable_answer", "the teacher's answer nests too deeply to read",
                   "try again, or use a teacher that supports structured output", entry="tool")  # fmt: skip
        return None, report
    except json.JSONDecodeError as err:
        if completion.finish_reason == "length":
            report.add(0, "", "answer_too_long", f"the teacher's answer was cut off after {completion.output_tokens} "
                       "tokens", "describe fewer arguments, or split the tool in two", entry="tool")  # fmt: skip
        else:
            report.add(0, "", "unparseable_answer", f"the teacher's answer is not JSON ({err.msg}): {text[:120]!r}",
                       "try again, or use a teacher that supports structured output", entry="tool")  # fmt: skip
        return None, report
    if not isinstance(answer, dict):
        report.add(0, "", "unparseable_answer", f"the teacher's answer is JSON but not an object: {text[:120]!r}",
                   "try again, or use a teacher that supports structured output", entry="tool")  # fmt: skip
        return None, report
    parameters = answer.get("parameters")
    if isinstance(parameters, str):  # some teachers write the schema as JSON text
        with contextlib.suppress(json.JSONDecodeError, RecursionError):  # else check_tool: not an object schema
            answer["parameters"] = json.loads(parameters)
    return answer, report


def _depth(value: Any) -> int:
    """How deep ``value`` nests (lists and objects), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, depth + 1) for v in item]
    return deepest


def _teacher_error(provider: str, credentials: Credentials, err: ProviderError) -> DistilleryError:
    said = scrub(err.message, credentials.api_key)
    if err.kind == "auth":
        return FailedPrecondition(f"{refused_key(provider, credentials)} ({said})", field="teacher")
    if err.kind == "spend_limit":
        return FailedPrecondition(f"the {provider} account cannot pay for requests: {said}", field="teacher")
    if err.kind == "input_too_long":
        return InvalidArgument(f"the description is too long for the teacher: {said}", field="description")
    if err.kind == "invalid_request":
        return InvalidArgument(f"the {provider} teacher refused the request: {said}", field="teacher")
    return Unavailable(f"the {provider} teacher did not answer ({err.kind}): {said}; try again shortly")
