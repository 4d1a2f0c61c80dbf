"""OpenAI chat completions, through the ``openai`` SDK: the "openai" and "platform" teachers.

"platform" is any OpenAI-compatible server (vLLM, llama.cpp's server) at the deployment's
base URL; such servers often take no key, so an empty key becomes a placeholder.
Requests are already in the chat shape; only tool calls and tools are rewrapped.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

import openai

from services.teacher.providers.base import Completion, Credentials, ProviderError, Request, ToolCall, http_error

PROVIDER = "openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Sent when no key is set: the SDK refuses to send a request without one.
NO_KEY = "none"
# Clients of servers that refused the json_schema response format and take only the older JSON
# mode with a schema ({"type": "json_object", "schema": ...}), as llama-cpp-python's server does.
_JSON_OBJECT_ONLY: weakref.WeakSet[openai.AsyncOpenAI] = weakref.WeakSet()


def connect(credentials: Credentials) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(
        api_key=credentials.api_key or NO_KEY,
        base_url=credentials.base_url or DEFAULT_BASE_URL,
        timeout=credentials.timeout_s,
        max_retries=0,
    )
    # The SDK reads these from the teacher's environment; a tenant's requests never carry them.
    client.organization = None
    client.project = None
    return client


async def close(client: openai.AsyncOpenAI) -> None:
    await client.close()


async def complete(client: openai.AsyncOpenAI, request: Request) -> Completion:
    params: dict[str, Any] = {"model": request.model, "messages": [_message(m) for m in request.messages]}
    # OpenAI's reasoning models take only max_completion_tokens; vLLM and llama.cpp know max_tokens.
    if client.base_url.host == "api.openai.com":
        params["max_completion_tokens"] = request.max_output_tokens
    else:
        params["max_tokens"] = request.max_output_tokens
    if request.tools:
        params["tools"] = [{"type": "function", "function": _function(t)} for t in request.tools]
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.seed is not None:
        params["seed"] = request.seed
    create = client.chat.completions.create
    schema = request.response_schema
    if schema is None:
        return _checked(await _call(client, create(**params)))
    if client not in _JSON_OBJECT_ONLY:
        json_schema = {"name": "answer", "schema": schema, "strict": False}
        params["response_format"] = {"type": "json_schema", "json_schema": json_schema}
        try:
            return _checked(await _call(client, create(**params)))
        except ProviderError as exc:
            # llama-cpp-python answers 500 (not 4xx) with its validation error.
            if not (exc.status in (400, 422, 500) and "response_format" in exc.message):
                raise
            _JSON_OBJECT_ONLY.add(client)
    params["response_format"] = {"type": "json_object", "schema": schema}
    return _checked(await _call(client, create(**params)))


def _checked(response: Any) -> Completion:
    try:
        return _completion(response)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise ProviderError("malformed", f"{PROVIDER} answered 200 with an unreadable completion") from exc


async def check(client: openai.AsyncOpenAI) -> None:
    """Lists the models: free, and refused with 401 for a bad key."""
    await _call(client, client.models.list())


def _message(message: dict[str, Any]) -> dict[str, Any]:
    role = message["role"]
    if role == "tool":
        return {"role": "tool", "tool_call_id": message["tool_call_id"], "content": message.get("content") or ""}
    out: dict[str, Any] = {"role": role, "content": message.get("content") or ""}
    if role == "assistant" and message.get("tool_calls"):
        out["content"] = message.get("content") or None
        out["tool_calls"] = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in message["tool_calls"]
        ]
    return out


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    function = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return function


def _completion(response: Any) -> Completion:
    choice = response.choices[0]
    message = choice.message
    if not message.content and not message.tool_calls:
        if message.refusal:
            raise ProviderError("refused", f"{PROVIDER} refused to answer: {message.refusal[:300]}")
        if choice.finish_reason == "content_filter":
            raise ProviderError("refused", f"{PROVIDER} withheld the answer (content filter)")
    calls = [
        ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments or "{}")
        for c in message.tool_calls or []
        if c.type == "function"
    ]
    usage = response.usage
    return Completion(
        text=message.content or "",
        tool_calls=calls,
        input_tokens=int(usage.prompt_tokens) if usage else 0,
        output_tokens=int(usage.completion_tokens) if usage else 0,
        finish_reason=str(choice.finish_reason or "stop"),
    )


async def _call(client: openai.AsyncOpenAI, pending: Any) -> Any:
    """Awaits one SDK call, mapping every failure to a ProviderError."""
    try:
        return await pending
    except openai.APIStatusError as exc:
        raise _status_error(exc, client.api_key) from None
    except openai.APITimeoutError:
        raise ProviderError("timeout", f"{PROVIDER} did not answer within the request timeout") from None
    except openai.APIConnectionError as exc:
        raise ProviderError(
            "connection", f"cannot reach {client.base_url.host}: {type(exc.__cause__).__name__}"
        ) from None
    except (openai.APIResponseValidationError, ValueError):
        # A 200 whose body is not JSON (json's error is a ValueError) or not a completion.
        raise ProviderError("malformed", f"{PROVIDER} answered 200 with a body that is not a completion") from None


def _status_error(exc: openai.APIStatusError, api_key: str) -> ProviderError:
    # The SDK hands over the body's "error" object (or the whole body when it has none).
    error = exc.body if isinstance(exc.body, dict) else {"message": str(exc.body or "")}
    # FastAPI-based servers (llama-cpp-python) answer a 422 with {"detail": [...]}.
    text = error.get("message") or json.dumps(error.get("detail", error))
    kind = None
    # The one 429 that waiting does not cure: the account has no credit left.
    if exc.status_code == 429 and "insufficient_quota" in (exc.code, exc.type):
        kind = "spend_limit"
    elif exc.code == "context_length_exceeded":
        kind = "input_too_long"
    return http_error(PROVIDER, exc.status_code, str(text), api_key, headers=exc.response.headers, kind=kind)
