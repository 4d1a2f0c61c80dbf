"""What a walked tool trajectory becomes: the job's stored row (verified, rejected with its
reasons, or failed), and at the end of the job a row of the tool-calls dataset it makes, in the
OpenAI fine-tuning shape."""

from __future__ import annotations

from typing import Any

from services.teacher.engine import Outcome
from services.teacher.tool_jobs import Prompt, Spec, Trajectory


def training_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Request-shape messages in the OpenAI fine-tuning shape: calls as ``{"id", "type": "function",
    "function": {"name", "arguments": JSON text}}``, tool results with their ``tool_call_id``."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "tool":
            out.append({"role": "tool", "tool_call_id": m["tool_call_id"], "content": m["content"]})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            calls = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                     for c in m["tool_calls"]]  # fmt: skip
            out.append({"role": "assistant", "content": m.get("content") or "", "tool_calls": calls})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


def stored_row(spec: Spec, prompt: Prompt, outcome: Outcome) -> dict[str, Any]:
    """The generation_rows entry of a walked trajectory: verified, rejected (kept, with its reasons) or failed."""
    entry: dict[str, Any] = {"row": outcome.row, "prompt_name": prompt.kind, "attempts": outcome.attempts}
    walked = outcome.completion
    if not isinstance(walked, Trajectory):
        return {**entry, "code": outcome.code, "message": outcome.message}
    entry |= {"input_tokens": walked.input_tokens, "output_tokens": walked.output_tokens,
              "attempts": max(1, walked.requests)}  # fmt: skip
    if walked.failure:
        return {**entry, "code": walked.failure, "message": walked.failure_message}
    output = {
        "messages": training_messages(walked.messages), "tools": spec.tools, "seed_prompt": spec.seeds[prompt.seed],
        "prompt_kind": prompt.kind, "no_tool": not prompt.wants_call,
    }  # fmt: skip
    if walked.reasons:
        return {**entry, "output": output, "rejected": True, "reasons": walked.reasons,
                "code": reason_code(walked.reasons[0]), "message": "; ".join(walked.reasons)}  # fmt: skip
    return {**entry, "output": output}


def reason_code(reason: str) -> str:
    """``"missing_required:city"`` -> ``"missing_required"``: what rejections are counted by."""
    return reason.split(":", 1)[0]


def dataset_row(output: dict[str, Any]) -> dict[str, Any]:
    """A stored trajectory as an upload row of a tool-calls dataset (OpenAI fine-tuning format)."""
    tools = [{"type": "function", "function": tool} for tool in output["tools"]]
    return {"messages": output["messages"], "tools": tools}
