"""The tool-calling recipe's data (``tool_calling.py``): a split's rows, the evaluation's prompts,
tokens for SFT, prompts for GRPO, and what the model is registered with.

Rows are canonical tool-call rows (``{"messages", "tools"}``, see ``services/ingest/tool_rows.py``);
they are rendered for the student with ``services.common.tool_format`` (its own tool template, or
the fallback), exactly as ``Generate`` renders a request.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from services.common import tool_calls, tool_format
from services.common.objects import ObjectStore
from services.common.tool_format import ToolFormat
from services.trainer.recipes import failures
from services.trainer.recipes.failures import RunFailure
from services.trainer.recipes.splits import split_lines

log = logging.getLogger("distillery.recipes.tool_calling")

EVAL_MIN_NEW_TOKENS, EVAL_MAX_NEW_TOKENS = 96, 512


def load_rows(store: ObjectStore, key: str, name: str) -> list[dict[str, Any]]:
    """A split's canonical tool-call rows (``{"messages", "tools"}``), each with an assistant turn."""
    rows = []
    for where, line in split_lines(store, key, name):
        try:
            row = json.loads(line)
            messages, tools = row["messages"], row["tools"]
        except (ValueError, KeyError, TypeError):
            raise failures.invalid_dataset(f"{where}: not a JSON object with messages and tools") from None
        if not (isinstance(messages, list) and isinstance(tools, list) and all(isinstance(m, dict) for m in messages)):
            raise failures.invalid_dataset(f"{where}: messages and tools must be lists")
        if not any(m.get("role") == "assistant" for m in messages):
            raise failures.invalid_dataset(f"{where}: the row has no assistant turn")
        rows.append({"messages": messages, "tools": tools})
    if not rows:
        raise failures.invalid_dataset(f"the {name} split has no rows")
    return rows


def eval_examples(rows: list[dict[str, Any]], fmt: ToolFormat, tokenizer: Any) -> dict[str, list[Any]]:
    """Eval prompts (text), the calls each wants ([]: none) and the tools it offers, in row order."""
    out: dict[str, list[Any]] = {"prompts": [], "expected": [], "tools": []}
    for row in rows:
        _, expected = tool_format.prompt_and_expected(row["messages"])
        try:
            out["prompts"].append(tool_format.prompt_text(fmt, tokenizer, row["messages"], row["tools"]))
        except tool_format.RenderError as err:
            raise unrenderable(str(err.__cause__ or err)) from err
        out["expected"].append(expected)
        out["tools"].append(row["tools"])
    return out


def eval_max_new_tokens(rows: list[dict[str, Any]], fmt: ToolFormat, tokenizer: Any) -> int:
    """Room for the longest wanted call turn and a little more, within [96, 512] tokens."""
    longest = 0
    for row in rows:
        _, expected = tool_format.prompt_and_expected(row["messages"])
        if expected:
            calls = [tool_calls.Call(c["name"], c["arguments"]) for c in expected]
            longest = max(
                longest, len(tokenizer(tool_calls.render_calls(calls), add_special_tokens=False)["input_ids"])
            )
    return min(EVAL_MAX_NEW_TOKENS, max(EVAL_MIN_NEW_TOKENS, longest + 16))


def sft_rows(
    rows: list[dict[str, Any]], fmt: ToolFormat, tokenizer: Any, max_seq_length: int, name: str
) -> tuple[list[dict[str, list[int]]], int]:
    """Pre-tokenized rows for trl (``input_ids``, ``assistant_masks``), and how many were left out.

    Left out: rows over ``max_seq_length`` tokens and rows the template cannot split into turns."""
    out, left_out, shortest = [], 0, math.inf
    for row in rows:
        try:
            ids, mask = tool_format.tokenize(fmt, tokenizer, row["messages"], row["tools"])
        except tool_format.RenderError as err:
            log.warning("%s row left out: %s", name, err)
            left_out += 1
            continue
        shortest = min(shortest, len(ids))
        if len(ids) > max_seq_length or 1 not in mask:
            left_out += 1
            continue
        out.append({"input_ids": ids, "assistant_masks": mask})
    if not out and not math.isfinite(shortest):
        raise unrenderable(f"no conversation of the {name} split renders turn by turn")
    if not out:
        raise failures.invalid_dataset(
            f"no row of the {name} split fits in sft.max_seq_length={max_seq_length} tokens (the shortest has "
            f"{shortest}): raise sft.max_seq_length or shorten the rows"
        )
    return out, left_out


def shared_system_prompt(rows: list[dict[str, Any]]) -> str:
    """The system message every training conversation opens with ("" when they differ or some have none):
    ``Generate`` puts it first when a request brings no system message, so the model is asked as it was trained."""
    found = {
        row["messages"][0].get("content") or "" if row["messages"][0]["role"] == "system" else "" for row in rows
    }  # fmt: skip
    return found.pop() if len(found) == 1 else ""


def trained_tools(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools the model was trained with, each once by name, in the order the training rows first offer them,
    as the rows hold them: registered with the model, they are what ``Generate`` offers it by default."""
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        for tool in row["tools"]:
            seen.setdefault(tool["name"], tool)
    return list(seen.values())


def unrenderable(why: str) -> RunFailure:
    return RunFailure(
        failures.UNKNOWN_MODEL,
        f"the student's chat template cannot render tool conversations ({why}): pick a chat model whose template "
        "takes system (or user), user and assistant turns in order",
        "student_model",
    )


def grpo_rows(rows: list[dict[str, Any]], fmt: ToolFormat, tokenizer: Any) -> list[dict[str, str]]:
    """GRPO rows: the prompt as text (tools rendered in), and the reward columns as JSON text."""
    out = []
    for row in rows:
        _, expected = tool_format.prompt_and_expected(row["messages"])
        try:
            prompt = tool_format.prompt_text(fmt, tokenizer, row["messages"], row["tools"])
        except tool_format.RenderError as err:
            raise unrenderable(str(err.__cause__ or err)) from err
        out.append({
            "prompt": tool_format.without_added_bos(tokenizer, prompt),
            "tools": json.dumps(row["tools"]), "expected_calls": json.dumps(expected),
        })  # fmt: skip
    return out
