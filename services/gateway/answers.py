"""An engine's answer, and its OpenAI shapes: a chat completion, the chunks of a streamed one, and
the assistant message captured traffic keeps."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolCallOut:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass
class Answer:
    content: str
    tool_calls: list[ToolCallOut] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop", "length" or "tool_calls"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def message(self) -> dict[str, Any]:
        """The assistant message, as OpenAI's chat completion holds it."""
        calls = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in self.tool_calls
        ]
        return {"role": "assistant", "content": self.content or (None if calls else ""), "tool_calls": calls or None}

    def usage(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}


@dataclass
class Reply:
    """One completion's id, time and model name, shared by its chunks."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{secrets.token_hex(12)}")
    created: int = field(default_factory=lambda: int(time.time()))

    def completion(self, answer: Answer) -> dict[str, Any]:
        message = {k: v for k, v in answer.message().items() if v is not None or k == "content"}
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason, "logprobs": None}],
            "usage": answer.usage(),
        }  # fmt: skip

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }  # fmt: skip

    def usage_chunk(self, answer: Answer) -> dict[str, Any]:
        return {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [], "usage": answer.usage(),
        }  # fmt: skip

    def closing_chunks(self, answer: Answer, sent: str) -> list[dict[str, Any]]:
        """What follows the content deltas: any content not streamed yet, the tool calls (whole), the finish."""
        chunks = []
        if answer.content.startswith(sent) and len(answer.content) > len(sent):
            chunks.append(self.chunk({"content": answer.content[len(sent) :]}))
        if answer.tool_calls:
            calls = [
                {"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for i, c in enumerate(answer.tool_calls)
            ]
            chunks.append(self.chunk({"tool_calls": calls}))
        chunks.append(self.chunk({}, answer.finish_reason))
        return chunks
