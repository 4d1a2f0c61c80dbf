"""The prompts of a tool-trajectory job, written once (stage 1 of ``tool_jobs``).

Every seed prompt; ``paraphrases`` rewordings of each (the same intent and details,
other words); and requests in the same domain that none of the tools can serve,
written for each seed in turn, so that they make about ``no_tool_share`` of all
prompts. Both are structured output, ``{"prompts": [...]}`` (a bare JSON list is read
too); an answer that is not is retried like a malformed response. A list shorter than
asked is taken as it is; a rewording equal to a prompt already there is dropped.

The job runner stores the result with the job (``plan_of``), with what writing it
took, so a restarted teacher never asks for the prompts again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from services.teacher.providers.base import Completion, ProviderError, Request
from services.teacher.tool_jobs import (
    MAX_PROMPT_CHARS,
    NO_TOOL,
    PARAPHRASE,
    SEED,
    Prompt,
    Spec,
    Teacher,
    Usage,
    no_tool_count,
    structured,
    tool_lines,
)  # fmt: skip

PROMPT_TEMPERATURE = 1.0  # rewordings and new requests need variety
PARAPHRASE_SYSTEM = (
    "You write training data for an assistant that calls tools. Rewrite the user's request in {n} different "
    "ways, as different users would type it: the same intent and the same details (names, places, numbers, "
    'dates), different wording. Answer only with JSON: {{"prompts": ["<request>", ...]}}.'
)
NO_TOOL_SYSTEM = (
    "You write training data for an assistant that can call only these tools:\n{tools}\n"
    "Write {n} requests a user of this assistant might send, in the same domain as the example request, "
    "that none of these tools can serve: the assistant must answer them directly, without calling a tool. "
    'Answer only with JSON: {{"prompts": ["<request>", ...]}}.'
)
PROMPTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"prompts": {"type": "array", "items": {"type": "string"}}},
    "required": ["prompts"],
    "additionalProperties": False,
}


def prompt_list(completion: Completion) -> list[str]:
    """The requests of a ``{"prompts": [...]}`` (or bare list) answer; raises a retryable error otherwise."""
    if completion.finish_reason == "length":
        raise ProviderError("malformed", "the teacher's list of requests was cut off at max_output_tokens")
    value = structured(completion.text)
    if isinstance(value, dict):
        value = value.get("prompts")
    if not isinstance(value, list):
        raise ProviderError("malformed", 'the teacher did not answer {"prompts": [...]}')
    return [v.strip() for v in value if isinstance(v, str) and v.strip() and len(v.strip()) <= MAX_PROMPT_CHARS]


async def expand(teacher: Teacher, spec: Spec, model: str, usage: Usage) -> list[Prompt]:
    """Every seed, its rewordings and its share of the no-tool requests, grouped by seed.

    A list shorter than asked is taken as it is (rewordings equal to a prompt already
    there are dropped); a request the provider cannot answer raises ``Unanswered``.
    """
    no_tool = no_tool_count(len(spec.seeds) * (1 + spec.paraphrases), spec.no_tool_share)
    per_seed = [no_tool // len(spec.seeds) + (i < no_tool % len(spec.seeds)) for i in range(len(spec.seeds))]

    async def written(system: str, seed: str, n: int) -> list[str]:
        if n <= 0:
            return []
        request = Request(model, [{"role": "system", "content": system}, {"role": "user", "content": seed}],
                          temperature=PROMPT_TEMPERATURE, max_output_tokens=max(spec.max_output_tokens, 256 * n),
                          response_schema=PROMPTS_SCHEMA)  # fmt: skip
        return prompt_list(await teacher.ask(request, usage, check=prompt_list))

    async def for_seed(i: int, seed: str) -> tuple[list[str], list[str]]:
        rewordings = await written(PARAPHRASE_SYSTEM.format(n=spec.paraphrases), seed, spec.paraphrases)
        unserved = await written(NO_TOOL_SYSTEM.format(n=per_seed[i], tools=tool_lines(spec.tools)), seed,
                                 per_seed[i])  # fmt: skip
        return rewordings, unserved

    asking = [asyncio.ensure_future(for_seed(i, seed)) for i, seed in enumerate(spec.seeds)]
    try:
        written_for = await asyncio.gather(*asking)
    finally:  # one failed (the job stops): the others ask no more
        for task in asking:
            task.cancel()
        await asyncio.gather(*asking, return_exceptions=True)
    seen = {_key(seed) for seed in spec.seeds}
    prompts = []
    for i, (seed, (rewordings, unserved)) in enumerate(zip(spec.seeds, written_for, strict=True)):
        prompts.append(Prompt(seed, SEED, i))
        for kind, texts, wanted in ((PARAPHRASE, rewordings, spec.paraphrases), (NO_TOOL, unserved, per_seed[i])):
            new = [t for t in dict.fromkeys(texts) if _key(t) not in seen][:wanted]
            seen.update(_key(t) for t in new)
            prompts += (Prompt(t, kind, i) for t in new)
    return prompts


def _key(text: str) -> str:
    return " ".join(text.casefold().split())


def plan_of(prompts: list[Prompt], usage: Usage) -> dict[str, Any]:
    """What is stored with the job: the prompts, and what writing them took."""
    return {
        "prompts": [{"text": p.text, "kind": p.kind, "seed": p.seed} for p in prompts],
        "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens, "requests": usage.requests,
    }  # fmt: skip


def prompts_of(plan: dict[str, Any]) -> list[Prompt]:
    return [Prompt(p["text"], p["kind"], int(p["seed"])) for p in plan["prompts"]]
