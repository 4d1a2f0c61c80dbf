"""The prompts `models try` asks: from a file, or the rows of a dataset's eval side, as the model was trained.

A dataset row is asked the way training built its prompt (the trainer's ``prompt_completion``): every turn
before the row's answer, its system prompt included, and the answer is kept as the reference. A tool-calls
row is asked up to its first assistant turn, with the row's tools; its reference is that turn (text, or the
calls as ``name(arguments)``). An inputs row has no reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from distillery.client import Client
from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2


@dataclass(frozen=True)
class Prompt:
    # What the model is asked, and the tools it is offered (canonical, as JSON text).
    messages: list[registry_pb2.ChatMessage]
    # What is shown: the last user turn.
    text: str
    # The row's own answer ("" for none).
    reference: str = ""
    tools_json: list[str] = field(default_factory=list)
    # The system prompt it is asked under ("" for none).
    system: str = ""


def read_prompts(path: Path) -> list[Prompt]:
    """Prompts from a file: JSONL rows with "prompt", "input" or "question" (or "messages": the last user turn),
    else one prompt per non-empty line. Each is asked alone, as a user turn."""
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            prompts.append(line.strip())
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise click.BadParameter(f"{path}:{number}: not JSON ({err})") from None
        text = next((row.get(k) for k in ("prompt", "input", "question") if isinstance(row.get(k), str)), None)
        if text is None and isinstance(row.get("messages"), list):
            users = [m.get("content") for m in row["messages"] if isinstance(m, dict) and m.get("role") == "user"]
            text = users[-1] if users and isinstance(users[-1], str) else None
        if not text:
            raise click.BadParameter(f'{path}:{number}: give "prompt" (or "input", "question", "messages")')
        prompts.append(text)
    return [Prompt(messages=[registry_pb2.ChatMessage(role="user", content=p)], text=p) for p in prompts]


def _text(content: Any) -> str:
    """A message's text: a string, or a list of text parts."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _calls(message: dict[str, Any]) -> str:
    calls = [c.get("function", {}) for c in message.get("tool_calls") or []]
    return "; ".join(f"{c.get('name', '')}({c.get('arguments', '')})" for c in calls)


def row_prompt(row_json: str) -> Prompt:
    """One canonical dataset row as a prompt and its reference answer."""
    row = json.loads(row_json)
    messages = row["messages"]
    answer: dict[str, Any] | None = None
    if "tools" in row:
        first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
        asked, answer = messages[:first], messages[first] if first < len(messages) else None
    elif messages and messages[-1]["role"] == "assistant":
        asked, answer = messages[:-1], messages[-1]
    else:  # an inputs row: the user turn alone
        asked = messages
    users = [_text(m.get("content")) for m in asked if m["role"] == "user"]
    return Prompt(
        messages=[registry_pb2.ChatMessage(role=m["role"], content=_text(m.get("content"))) for m in asked],
        text=users[-1] if users else "",
        reference=(_text(answer.get("content")) or _calls(answer)) if answer else "",
        tools_json=[json.dumps(t, ensure_ascii=False) for t in row.get("tools", [])],
        system=next((_text(m.get("content")) for m in asked if m["role"] == "system"), ""),
    )


def eval_prompts(client: Client, dataset_id: str, all_rows: bool, limit: int) -> list[Prompt]:
    """The first ``limit`` rows of the eval side of the dataset's newest split (or of the whole dataset)."""
    found = client.ingest.ReadDatasetRows(
        ingest_pb2.ReadDatasetRowsRequest(dataset_id=dataset_id, side="all" if all_rows else "eval", limit=limit)
    )
    return [row_prompt(line) for line in found.rows_json]
