"""What a tool-trajectory job asks the teacher, and what it keeps.

A job holds canonical tools (``{name, description, parameters}``, snapshotted from
ingest's active list when the job is made), seed prompts and objectives (``Spec``). It
runs in two stages:

1. **Prompts** (``tool_prompts``, once per job): the seeds, their rewordings, and
   requests that no tool fits.
2. **Trajectories** (``Trajectories.walk``, ``trajectories_per_prompt`` per prompt;
   row = prompt index x trajectories_per_prompt + trajectory): a system message (the
   objectives, and that tools may be called), the user request, then up to
   ``max_turns`` answers of the teacher with the tools offered. Every call gets a
   result, one of the user's example responses for that tool if any (taken in turn),
   else one the teacher writes as that tool's API from its schema. The walk ends at
   the first answer without a call.

Every call is verified as it comes, and the walk stops at the first problem (the
rest could not be kept anyway). A trajectory is **rejected**, and kept with its
reasons, when an answer's calls do not parse (``malformed_call:<code>``), name no
job tool (``unknown_tool``) or break the tool's schema (``check_call``'s codes), a
no-tool prompt gets a call (``unexpected_tool_call``), a tool prompt gets none
(``no_tool_call``), an answer is empty (``empty_answer``) or cut off
(``answer_truncated``), the turns run out (``no_final_answer``), or, with
``semantic_check``, the teacher judges that the calls do not serve the request
(``semantic_mismatch``). A request the provider cannot answer fails the trajectory
(code as in text jobs): only those count toward max_failed_fraction.

Every request goes through the generation engine, one request at a time, with the
provider's shared limiter (its rate limits, retries, and a job-fatal error stopping
the job); a structured answer that does not parse is retried like a malformed
response. Tokens and requests add up over every request of a trajectory. What a walked trajectory
becomes (a stored row, then a dataset row) is in ``trajectory_rows``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from services.common.tool_calls import Call, arguments_text, check_call, decode_arguments, load_json, parse_output
from services.teacher import text_jobs
from services.teacher.engine import Outcome, Task, generate
from services.teacher.limits import Limiter
from services.teacher.providers.base import Completion, ProviderError, Request

DEFAULT_TRAJECTORIES = 2
DEFAULT_PARAPHRASES = 2
DEFAULT_NO_TOOL_SHARE = 0.2
DEFAULT_MAX_TURNS = 4
TRAJECTORY_TEMPERATURE = 0.7  # the trajectories of one prompt should differ
MAX_PROMPT_CHARS = 8000
SEED, PARAPHRASE, NO_TOOL = "seed", "paraphrase", "no_tool"

SYSTEM = (
    "You are a helpful assistant that can call the tools given with this conversation. When a tool fits the "
    "user's request, call it with arguments that follow its parameters exactly, then answer from its result. "
    "When no tool fits, answer directly without calling a tool."
)
SIMULATE_SYSTEM = (
    "You are the {name} API: {description}\nIts arguments follow this JSON Schema: {parameters}\n"
    "You are given the arguments of one call. Answer with a realistic JSON result of that call, and nothing else."
)
JUDGE_SYSTEM = (
    "You check training data for an assistant that calls tools. You are given the tools, a user's request, "
    "the calls the assistant made with their arguments, and its final answer. Decide whether the calls are "
    "the right ones for the request, with arguments that fit what the user asked. "
    'Answer only with JSON: {"verdict": "yes" or "no", "reason": "<one sentence>"}.'
)
RESULT_SCHEMA: dict[str, Any] = {"type": "object"}
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": ["yes", "no"]}, "reason": {"type": "string"}},
    "required": ["verdict", "reason"],
    "additionalProperties": False,
}
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*)\n\s*```$", re.DOTALL)


# --- what the job asks for ---


@dataclass(frozen=True)
class Spec:
    """A trajectory job's request (as stored with the job), with the defaults filled in."""

    tools: list[dict[str, Any]]
    seeds: list[str]
    objectives: list[str]
    per_prompt: int
    paraphrases: int
    no_tool_share: float
    max_turns: int
    temperature: float
    max_output_tokens: int
    semantic_check: bool
    # Tool name -> the user's example results.
    responses: dict[str, list[str]]

    @property
    def system(self) -> str:
        if not self.objectives:
            return SYSTEM
        return SYSTEM + "\n\nObjectives:\n" + "\n".join(f"- {o}" for o in self.objectives)


def spec_of(request: dict[str, Any]) -> Spec:
    parameters = request.get("parameters", {})
    responses: dict[str, list[str]] = {}
    for example in request.get("tool_responses", []):
        responses.setdefault(example.get("tool_name", ""), []).append(example.get("response", ""))
    return Spec(
        tools=list(request.get("tools", [])),
        seeds=list(request.get("seed_prompts", [])),
        objectives=list(request.get("objectives", [])),
        per_prompt=int(parameters.get("trajectories_per_prompt") or DEFAULT_TRAJECTORIES),
        paraphrases=int(parameters.get("paraphrases", DEFAULT_PARAPHRASES)),
        no_tool_share=float(parameters.get("no_tool_share", DEFAULT_NO_TOOL_SHARE)),
        max_turns=int(parameters.get("max_turns") or DEFAULT_MAX_TURNS),
        temperature=float(parameters.get("temperature") or TRAJECTORY_TEMPERATURE),
        max_output_tokens=text_jobs.max_output_tokens(request),
        semantic_check=bool(parameters.get("semantic_check", False)),
        responses=responses,
    )


def no_tool_count(tool_prompts: int, share: float) -> int:
    """No-tool prompts to add to ``tool_prompts`` so that they make about ``share`` of all."""
    if share <= 0 or tool_prompts <= 0:
        return 0
    return math.floor(share * tool_prompts / (1 - share) + 0.5)


def estimate(spec: Spec) -> dict[str, int]:
    """Rows and (roughly) tokens, every text at 4 characters a token and every answer at half its cap.

    A tool trajectory is taken as two turns (a call, then the final answer), a simulated
    result unless every tool has examples, and a judgement with ``semantic_check``; a
    no-tool one as one turn; writing the prompts as one request per seed for each kind.
    """
    tool_prompts = len(spec.seeds) * (1 + spec.paraphrases)
    no_tool = no_tool_count(tool_prompts, spec.no_tool_share)
    simulated = any(t["name"] not in spec.responses for t in spec.tools)
    per_tool_trajectory = 2 + simulated + spec.semantic_check
    turn_chars = len(spec.system) + len(json.dumps(spec.tools)) + sum(map(len, spec.seeds)) // max(1, len(spec.seeds))
    trajectory_requests = spec.per_prompt * (tool_prompts * per_tool_trajectory + no_tool)
    writing_requests = len(spec.seeds) * (spec.paraphrases > 0) + min(no_tool, len(spec.seeds))
    requests = trajectory_requests + writing_requests
    return {
        "rows": (tool_prompts + no_tool) * spec.per_prompt,
        "input_tokens": requests * turn_chars // 4,
        "output_tokens": requests * (spec.max_output_tokens // 2),
    }


# --- prompts ---


@dataclass(frozen=True)
class Prompt:
    text: str
    kind: str  # SEED, PARAPHRASE or NO_TOOL
    seed: int  # the seed prompt it came from

    @property
    def wants_call(self) -> bool:
        return self.kind != NO_TOOL


def tool_lines(tools: list[dict[str, Any]]) -> str:
    return "\n".join(f"- {t['name']}: {t.get('description') or '(no description)'}" for t in tools)


# --- asking, through the engine ---


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0


class Unanswered(Exception):
    """A request the provider could not answer (retries exhausted, input too long, refused...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class Teacher:
    """One job's way to the provider: each request through the engine (the provider's shared
    limiter, its retries; a job-fatal error raises ``JobStopped``), its usage added up."""

    def __init__(
        self, call: Callable[[Request], Awaitable[Completion]], limiter: Limiter, *, max_attempts: int,
        max_backoff_s: float,
    ) -> None:  # fmt: skip
        self._call, self._limiter = call, limiter
        self._max_attempts, self._max_backoff_s = max_attempts, max_backoff_s

    async def ask(
        self, request: Request, usage: Usage, *, row: int = 0, check: Callable[[Completion], object] | None = None
    ) -> Completion:
        """The completion, once ``check`` (raising a retryable ``ProviderError``) accepts it."""

        async def counted(request: Request) -> Completion:
            usage.requests += 1
            completion = await self._call(request)
            usage.input_tokens += completion.input_tokens
            usage.output_tokens += completion.output_tokens
            if check is not None:
                check(completion)
            return completion

        outcomes: list[Outcome] = []

        async def keep(outcome: Outcome) -> None:
            outcomes.append(outcome)

        await generate([Task(row, request)], counted, self._limiter, keep, workers=1,
                       max_attempts=self._max_attempts, max_backoff_s=self._max_backoff_s)  # fmt: skip
        (outcome,) = outcomes
        if outcome.completion is None:
            raise Unanswered(outcome.code, outcome.message)
        return outcome.completion


def structured(text: str) -> Any:
    """The JSON value of a structured answer (a ``` fence around it allowed), or raises ProviderError."""
    text = text.strip()
    fenced = _FENCE.match(text)
    value, error = load_json(fenced.group(1) if fenced else text)
    if error:
        raise ProviderError("malformed", f"the teacher's structured answer is not usable JSON ({error})")
    return value


# --- stage 2: trajectories ---


@dataclass(frozen=True)
class Trajectory(Completion):
    """A walked trajectory, handed back to the engine as the row's completion."""

    # Request shape (``providers.base.Request.messages``).
    messages: list[dict[str, Any]] = field(default_factory=list)
    # Why it was rejected ([] when verified).
    reasons: list[str] = field(default_factory=list)
    # Set when a request went unanswered: the row failed.
    failure: str = ""
    failure_message: str = ""
    requests: int = 0


def calls_of(completion: Completion) -> tuple[list[dict[str, Any]], str, list[str]]:
    """An answer's calls (native ones, else ``<tool_call>`` blocks in its text) as
    ``{"name", "arguments": text, "parsed"}``, its text, and why they do not parse."""
    if completion.tool_calls:
        calls, problems = [], []
        for call in completion.tool_calls:
            arguments, error = decode_arguments(call.arguments)
            if error:
                problems.append(error if error == "arguments_not_object" else f"malformed_call:{error}")
                calls.append({"name": call.name, "arguments": call.arguments, "parsed": None})
            else:
                calls.append({"name": call.name, "arguments": arguments_text(arguments), "parsed": arguments})
        return calls, completion.text.strip(), problems
    parsed = parse_output(completion.text)
    calls = [{"name": c.name, "arguments": arguments_text(c.arguments), "parsed": c.arguments} for c in parsed.calls]
    return calls, parsed.text, [f"malformed_call:{parsed.error}"] if parsed.error else []


class Trajectories:
    """The trajectories of one job: ``tasks`` for the engine, ``walk`` as its call."""

    def __init__(self, teacher: Teacher, spec: Spec, prompts: list[Prompt], model: str) -> None:
        self.teacher, self.spec, self.prompts, self.model = teacher, spec, prompts, model
        self.tools = {t["name"]: t for t in spec.tools}

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.spec.per_prompt

    def prompt(self, row: int) -> Prompt:
        return self.prompts[row // self.spec.per_prompt]

    def tasks(self, done: set[int]) -> Iterator[Task]:
        """One task per row not stored yet. Its request is the opening turn; its seed is the row
        (so the trajectories of one prompt differ, and ``walk`` knows which row it walks)."""
        for row in range(self.rows):
            if row not in done:
                yield Task(row, self._turn([{"role": "system", "content": self.spec.system},
                                            {"role": "user", "content": self.prompt(row).text}], row))  # fmt: skip

    def _turn(self, messages: list[dict[str, Any]], row: int) -> Request:
        return Request(self.model, messages, tools=self.spec.tools, temperature=self.spec.temperature,
                       max_output_tokens=self.spec.max_output_tokens, seed=row)  # fmt: skip

    async def walk(self, opening: Request) -> Trajectory:
        row = int(opening.seed or 0)
        usage = Usage()
        messages = list(opening.messages)
        failure, message = "", ""
        try:
            reasons = await self._turns(row, messages, usage)
            if not reasons and self.spec.semantic_check and self.prompt(row).wants_call:
                reasons = await self._judged(row, messages, usage)
        except Unanswered as unanswered:
            reasons, failure, message = [], unanswered.code, unanswered.message
        return Trajectory("", [], usage.input_tokens, usage.output_tokens, messages=messages, reasons=reasons,
                          failure=failure, failure_message=message, requests=usage.requests)  # fmt: skip

    async def _turns(self, row: int, messages: list[dict[str, Any]], usage: Usage) -> list[str]:
        """Walk the turns into ``messages``; why the trajectory is rejected ([] when it is not)."""
        prompt, called = self.prompt(row), False
        for turn in range(self.spec.max_turns):
            completion = await self.teacher.ask(self._turn(list(messages), row), usage, row=row)
            calls, text, problems = calls_of(completion)
            for n, call in enumerate(calls):
                call["id"] = f"call_{turn}_{n}"
            made = [{"id": c["id"], "name": c["name"], "arguments": c["arguments"]} for c in calls]
            messages.append({"role": "assistant", "content": text, "tool_calls": made})
            if completion.finish_reason == "length":
                return ["answer_truncated"]
            if problems:
                return problems
            if not calls:
                return ["empty_answer"] if not text else [] if called or not prompt.wants_call else ["no_tool_call"]
            if not prompt.wants_call:
                return ["unexpected_tool_call"]
            reasons = [r for c in calls for r in check_call(Call(c["name"], c["parsed"]), self.tools)]
            if reasons:
                return list(dict.fromkeys(reasons))
            called = True
            for n, call in enumerate(calls):
                result = await self._result(row, turn, n, call, usage)
                messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["name"], "content": result})
        return ["no_final_answer"]

    async def _result(self, row: int, turn: int, n: int, call: dict[str, Any], usage: Usage) -> str:
        """The user's example result for this tool (taken in turn), else one the teacher writes as the tool."""
        examples = self.spec.responses.get(call["name"])
        if examples:
            return examples[(row + turn + n) % len(examples)]
        tool = self.tools[call["name"]]
        system = SIMULATE_SYSTEM.format(name=tool["name"], description=tool.get("description") or "",
                                        parameters=json.dumps(tool.get("parameters") or {}))  # fmt: skip
        request = Request(self.model, [{"role": "system", "content": system},
                                       {"role": "user", "content": call["arguments"]}],
                          temperature=self.spec.temperature, max_output_tokens=self.spec.max_output_tokens,
                          response_schema=RESULT_SCHEMA)  # fmt: skip
        completion = await self.teacher.ask(request, usage, row=row, check=_simulated)
        return json.dumps(structured(completion.text), ensure_ascii=False)

    async def _judged(self, row: int, messages: list[dict[str, Any]], usage: Usage) -> list[str]:
        calls = [{"name": c["name"], "arguments": json.loads(c["arguments"])}
                 for m in messages if m["role"] == "assistant" for c in m["tool_calls"]]  # fmt: skip
        shown = (f"Tools:\n{tool_lines(self.spec.tools)}\n\nRequest:\n{self.prompt(row).text}\n\n"
                 f"Calls:\n{json.dumps(calls, ensure_ascii=False)}\n\n"
                 f"Final answer:\n{messages[-1]['content']}")  # fmt: skip
        judge = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": shown}]
        request = Request(self.model, judge, temperature=0.0, max_output_tokens=256, response_schema=VERDICT_SCHEMA)
        completion = await self.teacher.ask(request, usage, row=row, check=_verdict)
        return [] if _verdict(completion) == "yes" else ["semantic_mismatch"]


def _simulated(completion: Completion) -> None:
    if completion.finish_reason == "length":
        raise ProviderError("malformed", "the simulated tool result was cut off at max_output_tokens")
    structured(completion.text)


def _verdict(completion: Completion) -> str:
    value = structured(completion.text)
    verdict = value.get("verdict") if isinstance(value, dict) else None
    if not isinstance(verdict, str) or verdict.strip().lower() not in ("yes", "no"):
        raise ProviderError("malformed", 'the teacher did not judge with {"verdict": "yes" or "no"}')
    return verdict.strip().lower()
