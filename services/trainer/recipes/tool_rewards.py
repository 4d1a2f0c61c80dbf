"""GRPO rewards and eval rates for tool calls, on top of ``tool_calls.py`` (parsing, checks, comparison).

**Rewards** for trl's ``GRPOTrainer`` (``REWARD_FUNCTIONS``, ``REWARD_WEIGHTS``): each is
``f(prompts, completions, **columns) -> list[float]`` in [0, 1], reading the dataset
columns ``tools`` (JSON text: canonical tools ``{name, description, parameters}``) and
``expected_calls`` (JSON text: ``[{"name", "arguments"}]``; ``[]`` when no call is
wanted). A completion is text or trl's conversational list of messages (assistant
``content``, and ``tool_calls`` if trl parsed them). "Made calls" are the blocks that
parsed, even when another block did not (``reward_format`` penalises that one):

- ``reward_format``: 1 when the output parses with no error and, if calls are
  wanted, holds at least one; if none is wanted, holds none and some text;
- ``reward_tool``: tool names made and wanted matched one to one (as multisets),
  divided by the larger count; 1 when none was wanted or made;
- ``reward_schema``: the share of made calls that pass ``check_call``; with no call
  made, 1 if none was wanted, else 0;
- ``reward_arguments``: made calls matched one to one to wanted calls with the same
  name and matching arguments, divided by the larger count; 1 when both are empty;
- ``reward_no_call``: where no call is wanted, 1 when the output parses and makes
  none, else 0; where a call is wanted, ``NEUTRAL`` (0.5) for every completion. GRPO
  compares the completions of one prompt, so a value shared by all of them moves
  nothing: the signal is in the no-call groups alone, and the mean stays in [0, 1].

**Rates**: ``score``'s docstring.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from services.common import tool_calls
from services.common.tool_calls import (
    Call,
    Parsed,
    check_call,
    expected_calls,
    parse_output,
    render_call,
    tools_by_name,
)

NEUTRAL = 0.5


# -- GRPO rewards ------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """A completion as text: as given, or trl's assistant messages joined (their tool_calls as blocks)."""
    if isinstance(completion, str):
        return completion
    parts: list[str] = []
    for message in completion if isinstance(completion, list) else []:
        if not isinstance(message, Mapping) or message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += (p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
        for call in message.get("tool_calls") or []:
            function = call.get("function", call) if isinstance(call, Mapping) else {}
            if isinstance(function, Mapping):
                parts.append(render_call(function.get("name", ""), function.get("arguments", {})))
    return "\n".join(parts)


def _format(parsed: Parsed, wanted: list[Call], tools: Mapping[str, Any]) -> float:
    if parsed.error:
        return 0.0
    return float(bool(parsed.calls) if wanted else not parsed.calls and bool(parsed.text))


def _tool(parsed: Parsed, wanted: list[Call], tools: Mapping[str, Any]) -> float:
    most = max(len(parsed.calls), len(wanted))
    return tool_calls.matched(parsed.calls, wanted, lambda a, b: a.name == b.name) / most if most else 1.0


def _schema(parsed: Parsed, wanted: list[Call], tools: Mapping[str, Any]) -> float:
    if not parsed.calls:
        return 0.0 if wanted else 1.0
    return sum(not check_call(call, tools) for call in parsed.calls) / len(parsed.calls)


def _arguments(parsed: Parsed, wanted: list[Call], tools: Mapping[str, Any]) -> float:
    most = max(len(parsed.calls), len(wanted))
    return tool_calls.matched(parsed.calls, wanted, tool_calls.same_call) / most if most else 1.0


def _no_call(parsed: Parsed, wanted: list[Call], tools: Mapping[str, Any]) -> float:
    return NEUTRAL if wanted else float(parsed.ok and not parsed.calls)


def _rewards(scorer: Any, completions: list[Any], columns: Mapping[str, Any]) -> list[float]:
    if "expected_calls" not in columns or "tools" not in columns:
        raise KeyError("the tool rewards need the dataset columns 'expected_calls' and 'tools'")
    rows = zip(completions, columns["expected_calls"], columns["tools"], strict=True)
    return [float(scorer(parse_output(completion_text(c)), expected_calls(e), tools_by_name(t))) for c, e, t in rows]


def reward_format(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
    return _rewards(_format, completions, columns)


def reward_tool(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
    return _rewards(_tool, completions, columns)


def reward_schema(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
    return _rewards(_schema, completions, columns)


def reward_arguments(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
    return _rewards(_arguments, completions, columns)


def reward_no_call(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
    return _rewards(_no_call, completions, columns)


REWARD_FUNCTIONS = [reward_format, reward_tool, reward_schema, reward_arguments, reward_no_call]
REWARD_WEIGHTS = [1.0, 1.0, 1.0, 2.0, 1.0]  # matching arguments is the goal; the others lead to it


# -- evaluation --------------------------------------------------------------------------------


Rows = list[list[dict[str, Any]]]


def score(outputs: list[str], expected: Rows, tools: Rows) -> dict[str, float]:
    """``score_parsed`` of the model's texts, each read with ``parse_output``."""
    return score_parsed([parse_output(output) for output in outputs], expected, tools)


def score_parsed(answers: list[Parsed], expected: Rows, tools: Rows) -> dict[str, float]:
    """Rates over eval rows: ``answers[i]`` is the model's answer to row i as parsed (by ``parse_output``, or
    as ``Generate`` returned it: ``decoding.ToolAnswer.parsed``), ``expected[i]`` its wanted calls
    (``[]``: no call wanted), ``tools[i]`` the tools it was offered. An output "parses" when
    ``parse_output`` finds no error. Over the rows wanting a call:

    - ``valid_call_rate``: it parses into at least one call, each naming one of the row's tools;
    - ``right_tool_rate``: it parses, and the tool names called equal those wanted (as multisets);
    - ``schema_valid_rate``: it parses into at least one call, each passing ``check_call``;
    - ``args_match_rate``: it parses, and its calls pair one to one with the wanted ones, same
      name and ``arguments_match`` (so the tools are right too).

    Over the rows wanting none, ``no_call_rate``: it parses and makes no call. Over all rows,
    ``correct_rate``: a call row with matching and schema-valid calls, or a no-call row with none.
    A rate with no rows to count is 0.0; ``rows``, ``call_rows`` and ``no_call_rows`` say how many.
    """
    counts: Counter[str] = Counter()
    for parsed, row_expected, row_tools in zip(answers, expected, tools, strict=True):
        wanted, offered = expected_calls(row_expected), tools_by_name(row_tools)
        calls = parsed.calls if parsed.ok else []
        if not wanted:
            counts["no_call_rows"] += 1
            made_none = parsed.ok and not parsed.calls
            counts["no_call"] += made_none
            counts["correct"] += made_none
            continue
        counts["call_rows"] += 1
        schema_valid = bool(calls) and all(not check_call(call, offered) for call in calls)
        args_match = parsed.ok and len(calls) == len(wanted) == tool_calls.matched(calls, wanted, tool_calls.same_call)
        counts["valid_call"] += bool(calls) and all(call.name in offered for call in calls)
        counts["right_tool"] += parsed.ok and Counter(c.name for c in calls) == Counter(c.name for c in wanted)
        counts["schema_valid"] += schema_valid
        counts["args_match"] += args_match
        counts["correct"] += schema_valid and args_match
    call_rows, no_call_rows = counts["call_rows"], counts["no_call_rows"]

    def rate(name: str, rows: int) -> float:
        return counts[name] / rows if rows else 0.0

    return {
        "valid_call_rate": rate("valid_call", call_rows),
        "right_tool_rate": rate("right_tool", call_rows),
        "schema_valid_rate": rate("schema_valid", call_rows),
        "args_match_rate": rate("args_match", call_rows),
        "no_call_rate": rate("no_call", no_call_rows),
        "correct_rate": rate("correct", call_rows + no_call_rows),
        "rows": float(call_rows + no_call_rows),
        "call_rows": float(call_rows),
        "no_call_rows": float(no_call_rows),
    }
