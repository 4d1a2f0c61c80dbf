"""What a text job asks the teacher, row by row, and what it keeps of each answer.

Text distillation: every input under every named system prompt. Row ``i * P + p`` is
input ``i`` under prompt ``p`` (P prompts), so 100 inputs x 2 prompts = 200 rows;
each generated pair is tagged with its prompt's name.

Augmentation: ``augment_count`` new pairs in the style of a small pairs dataset (the
train split only: eval rows are never shown to the teacher). Row ``r`` shows the
teacher a few example pairs drawn with a seed of its own and asks for one new pair
as structured output; duplicates of the originals or of each other are dropped when
the job ends (``deduplicated``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from distillery.teacher.v1 import teacher_pb2 as pb
from services.common.pairs import pair_key
from services.teacher.engine import Outcome, Task
from services.teacher.providers.base import Request

DISTILL_TEMPERATURE = 0.0  # a distillation answer is the teacher's best one
AUGMENT_TEMPERATURE = 1.0  # new pairs need variety
DEFAULT_MAX_OUTPUT_TOKENS = 512
EXAMPLES_SHOWN = 3
PAIR_SCHEMA = {
    "type": "object",
    "properties": {"input": {"type": "string"}, "output": {"type": "string"}},
    "required": ["input", "output"],
    "additionalProperties": False,
}
AUGMENT_INSTRUCTIONS = (
    "You write training data. You are shown example pairs of a user's input and the assistant's output, "
    "all following the same instruction. Write ONE new pair in the same style, on a different topic or "
    "wording than every example (never copy one). Answer only with JSON: "
    '{"input": "<the new user input>", "output": "<the assistant\'s output for it>"}.'
)
INSTRUCTION_MARK = "\n\nThe instruction every pair follows:\n"


def prompts_of(request: dict[str, Any]) -> list[dict[str, str]]:
    return [{"name": p.get("name", ""), "text": p.get("text", "")} for p in request.get("system_prompts", [])]


def max_output_tokens(request: dict[str, Any]) -> int:
    return int(request.get("parameters", {}).get("max_output_tokens") or DEFAULT_MAX_OUTPUT_TOKENS)


def temperature(kind: int, request: dict[str, Any]) -> float:
    given = float(request.get("parameters", {}).get("temperature") or 0.0)
    if kind == pb.JOB_KIND_AUGMENTATION:
        return given or AUGMENT_TEMPERATURE
    return given or DISTILL_TEMPERATURE


def canonical_rows(lines: Iterable[bytes]) -> Iterator[list[dict[str, Any]]]:
    """The messages of each canonical JSONL line (as ingest writes them)."""
    for line in lines:
        if line.strip():
            yield orjson.loads(line)["messages"]


# --- text distillation ---


def distill_tasks(
    inputs: Iterable[list[dict[str, Any]]], request: dict[str, Any], model: str, done: set[int]
) -> Iterator[Task]:
    prompts = prompts_of(request)
    limit, heat = max_output_tokens(request), temperature(pb.JOB_KIND_TEXT_DISTILLATION, request)
    for i, messages in enumerate(inputs):
        user = messages[-1]["content"]
        for p, prompt in enumerate(prompts):
            row = i * len(prompts) + p
            if row not in done:
                conversation = [{"role": "system", "content": prompt["text"]}, {"role": "user", "content": user}]
                yield Task(row, Request(model, conversation, temperature=heat, max_output_tokens=limit))


# --- augmentation ---


def augment_tasks(
    pairs: list[list[dict[str, Any]]], request: dict[str, Any], model: str, done: set[int], seed: int
) -> Iterator[Task]:
    count = int(request.get("parameters", {}).get("augment_count") or 0)
    limit, heat = max_output_tokens(request), temperature(pb.JOB_KIND_AUGMENTATION, request)
    for row in range(count):
        if row in done:
            continue
        rng = random.Random(f"{seed}:{row}")
        shown = rng.sample(pairs, k=min(EXAMPLES_SHOWN, len(pairs)))
        instruction = shown[0][0]["content"]
        same = [m for m in shown if m[0]["content"] == instruction]
        examples = "\n\n".join(
            f"Example {n + 1}\ninput: {m[1]['content']}\noutput: {m[2]['content']}" for n, m in enumerate(same)
        )
        conversation = [
            {"role": "system", "content": AUGMENT_INSTRUCTIONS + INSTRUCTION_MARK + instruction},
            {"role": "user", "content": examples},
        ]
        yield Task(
            row,
            Request(model, conversation, temperature=heat, max_output_tokens=limit, response_schema=PAIR_SCHEMA,
                    seed=seed + row),
        )  # fmt: skip


# --- answers to rows ---


def stored_row(kind: int, request: dict[str, Any], task: Task, outcome: Outcome) -> dict[str, Any]:
    """The generation_rows entry of a finished row: its output, or why it has none."""
    prompts = prompts_of(request)
    name = prompts[task.row % len(prompts)]["name"] if kind == pb.JOB_KIND_TEXT_DISTILLATION and prompts else ""
    entry: dict[str, Any] = {"row": task.row, "prompt_name": name, "attempts": outcome.attempts}
    completion = outcome.completion
    if completion is None:
        return {**entry, "code": outcome.code, "message": outcome.message}
    entry |= {"input_tokens": completion.input_tokens, "output_tokens": completion.output_tokens}
    if completion.finish_reason == "length":
        return {**entry, "code": "answer_truncated", "message": f"the answer stopped at max_output_tokens "
                f"({task.request.max_output_tokens}); raise generation.max_output_tokens"}  # fmt: skip
    if kind == pb.JOB_KIND_AUGMENTATION:
        return entry | _augmented(task, completion.text)
    answer = completion.text.strip()
    if not answer:
        return {**entry, "code": "empty_answer", "message": "the teacher answered with no text"}
    messages = [*task.request.messages, {"role": "assistant", "content": answer}]
    return {**entry, "output": {"messages": messages, "prompt_name": name}}


def _augmented(task: Task, text: str) -> dict[str, Any]:
    try:
        pair = orjson.loads(text)
        new_input, new_output = pair["input"].strip(), pair["output"].strip()
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return {"code": "malformed_pair", "message": 'the teacher did not answer {"input": ..., "output": ...}'}
    if not new_input or not new_output:
        return {"code": "empty_answer", "message": "the teacher wrote a pair with a blank input or output"}
    instruction = task.request.messages[0]["content"].split(INSTRUCTION_MARK, 1)[1]
    messages = [
        {"role": "system", "content": instruction},
        {"role": "user", "content": new_input},
        {"role": "assistant", "content": new_output},
    ]
    return {"output": {"messages": messages}}


def deduplicated(
    generated: list[dict[str, Any]], originals: Iterable[list[dict[str, Any]]]
) -> tuple[list[dict[str, Any]], int]:
    """The generated pairs that repeat neither an original nor an earlier generated pair, and how many were dropped."""
    seen = {pair_key(m) for m in originals}
    kept = []
    for row in generated:
        key = pair_key(row["messages"])
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept, len(generated) - len(kept)
