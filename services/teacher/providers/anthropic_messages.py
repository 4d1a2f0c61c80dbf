"""Anthropic messages, through the ``anthropic`` SDK.

The chat-shaped request becomes a messages request: system messages join the ``system``
field, assistant tool calls become ``tool_use`` blocks and tool results ``tool_result`` blocks
of the next user turn (consecutive turns of one role merge, as the API wants). Structured
output forces one tool, ``answer``, whose input schema is the wanted schema; its input is the
answer. This SDK version takes no temperature or seed, so those are not sent.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anthropic

from services.teacher.providers.base import Completion, Credentials, ProviderError, Request, ToolCall, http_error

PROVIDER = "anthropic"
DEFAULT_BASE_URL = "https://api.anthropic.com"
ANSWER_TOOL = "answer"
# Out of credit or over a spend limit: waiting does not help.
_SPEND = re.compile(r"credit balance|usage limits|spend limit", re.IGNORECASE)
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
}


def connect(credentials: Credentials) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        # An explicit key keeps the SDK from reading keys or profiles from the teacher's environment.
        api_key=credentials.api_key or "none",
        base_url=credentials.base_url or DEFAULT_BASE_URL,
        timeout=credentials.timeout_s,
        max_retries=0,
    )


async def close(client: anthropic.AsyncAnthropic) -> None:
    await client.close()


async def complete(client: anthropic.AsyncAnthropic, request: Request) -> Completion:
    system, messages = _messages(request.messages)
    params: dict[str, Any] = {"model": request.model, "max_tokens": request.max_output_tokens, "messages": messages}
    if system:
        params["system"] = system
    tools = [_tool(t) for t in request.tools]
    wrapped = False
    if request.response_schema is not None:
        schema = request.response_schema
        # A tool's input is always an object: any other answer travels in one property.
        wrapped = schema.get("type", "object" if "properties" in schema else None) != "object"
        if wrapped:
            schema = {"type": "object", "properties": {"answer": schema}, "required": ["answer"]}
        else:
            schema = {"type": "object", **schema}
        tools.append({"name": ANSWER_TOOL, "description": "Give the final answer.", "input_schema": schema})
        params["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL}
    if tools:
        params["tools"] = tools
    message = await _call(client, client.messages.create(**params))
    try:
        return _completion(message, structured=request.response_schema is not None, wrapped=wrapped)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ProviderError("malformed", f"{PROVIDER} answered 200 with an unreadable message") from exc


async def check(client: anthropic.AsyncAnthropic) -> None:
    """Lists one model: free, and refused with 401 for a bad key."""
    await _call(client, client.models.list(limit=1))


def _messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        role, text = m["role"], m.get("content") or ""
        blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        if role == "system":
            system.append(text)
            continue
        if role == "tool":
            role = "user"
            blocks = [{"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": text}]
        elif role == "assistant":
            blocks += [
                {"type": "tool_use", "id": c["id"], "name": c["name"], "input": _arguments(c["arguments"])}
                for c in m.get("tool_calls") or []
            ]
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return "\n\n".join(system), out


def _arguments(arguments: str) -> dict[str, Any]:
    """A tool call's JSON text as the object Anthropic wants; other text is kept under "arguments"."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    out = {"name": tool["name"], "input_schema": tool.get("parameters") or {"type": "object", "properties": {}}}
    if tool.get("description"):
        out["description"] = tool["description"]
    return out


def _completion(message: Any, *, structured: bool, wrapped: bool) -> Completion:
    if message.stop_reason == "refusal":
        raise ProviderError("refused", f"{PROVIDER} refused to answer")
    texts: list[str] = []
    calls: list[ToolCall] = []
    answer: Any = None
    for block in message.content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "tool_use" and structured and block.name == ANSWER_TOOL:
            answer = block.input["answer"] if wrapped else block.input
        elif block.type == "tool_use":
            calls.append(ToolCall(id=block.id, name=block.name, arguments=json.dumps(block.input)))
    finish = _FINISH.get(message.stop_reason or "end_turn", message.stop_reason)
    if finish == "tool_use":
        finish = "tool_calls" if calls else "stop"
    return Completion(
        text=json.dumps(answer) if answer is not None else "".join(texts),
        tool_calls=calls,
        input_tokens=int(message.usage.input_tokens),
        output_tokens=int(message.usage.output_tokens),
        finish_reason=finish,
    )


async def _call(client: anthropic.AsyncAnthropic, pending: Any) -> Any:
    """Awaits one SDK call, mapping every failure to a ProviderError."""
    try:
        return await pending
    except anthropic.APIStatusError as exc:
        raise _status_error(exc, client.api_key or "") from None
    except anthropic.APITimeoutError:
        raise ProviderError("timeout", f"{PROVIDER} did not answer within the request timeout") from None
    except anthropic.APIConnectionError as exc:
        raise ProviderError(
            "connection", f"cannot reach {client.base_url.host}: {type(exc.__cause__).__name__}"
        ) from None
    except (anthropic.APIResponseValidationError, ValueError):
        # A 200 whose body is not JSON (json's error is a ValueError) or not a message.
        raise ProviderError("malformed", f"{PROVIDER} answered 200 with a body that is not a message") from None


def _status_error(exc: anthropic.APIStatusError, api_key: str) -> ProviderError:
    text = exc.api_message or (exc.body if isinstance(exc.body, str) else "")
    kind = None
    billing = exc.type == "billing_error" or exc.status_code == 402
    spend_code = (exc.error_code or "").endswith("spend_limit_reached")
    if billing or spend_code or (exc.status_code in (400, 429) and _SPEND.search(text)):
        kind = "spend_limit"
    elif exc.type == "overloaded_error":
        kind = "overloaded"
    return http_error(PROVIDER, exc.status_code, text, api_key, headers=exc.response.headers, kind=kind)
