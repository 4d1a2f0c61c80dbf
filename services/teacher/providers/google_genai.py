"""Google's generate_content, through the ``google-genai`` SDK (Gemini Developer API, API key).

System messages become ``system_instruction``; assistant tool calls become ``function_call``
parts of a model turn and tool results ``function_response`` parts of a user turn. Gemini 3
wants each model turn's first function call sent back with the thought signature it came
with; we do not keep those, so replayed calls carry Google's documented placeholder.
Structured output is ``response_mime_type="application/json"`` with ``response_json_schema``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import httpx2
from google import genai
from google.genai import errors, types

from services.teacher.providers.base import (
    Completion,
    Credentials,
    ProviderError,
    Request,
    ToolCall,
    http_error,
    retry_after_s,
)

PROVIDER = "google"
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/"
API_VERSION = "v1beta"
# Google's documented stand-in for a thought signature on calls that were not kept verbatim.
REPLAYED_SIGNATURE = b"skip_thought_signature_validator"
_SPEND = re.compile(r"prepayment credits|credits are depleted|spend(ing)? cap|billing (is )?disabled", re.IGNORECASE)
_OVERLOADED = re.compile(r"overloaded", re.IGNORECASE)
_REFUSED = {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION", "IMAGE_SAFETY"}
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}


def connect(credentials: Credentials) -> genai.client.AsyncClient:
    client = genai.Client(
        vertexai=False,
        api_key=credentials.api_key or "none",
        http_options=types.HttpOptions(
            base_url=credentials.base_url or DEFAULT_BASE_URL,
            # Pinned: not the SDK's default nor the teacher's GOOGLE_GENAI_API_VERSION.
            api_version=API_VERSION,
            timeout=max(1, int(credentials.timeout_s * 1000)),
            # One attempt: the SDK neither retries statuses nor, with options set, connection errors.
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )
    return client.aio


async def close(client: genai.client.AsyncClient) -> None:
    await client.aclose()


async def complete(client: genai.client.AsyncClient, request: Request) -> Completion:
    system, contents = _contents(request.messages)
    config: dict[str, Any] = {
        "max_output_tokens": request.max_output_tokens,
        "automatic_function_calling": {"disable": True},
    }
    if system:
        config["system_instruction"] = system
    if request.tools:
        config["tools"] = [{"function_declarations": [_declaration(t) for t in request.tools]}]
    if request.response_schema is not None:
        config["response_mime_type"] = "application/json"
        config["response_json_schema"] = request.response_schema
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.seed is not None:
        config["seed"] = request.seed
    pending = client.models.generate_content(
        model=request.model,
        contents=[types.Content.model_validate(c) for c in contents],
        config=types.GenerateContentConfig.model_validate(config),
    )
    response = await _call(client, pending)
    try:
        return _completion(response)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise ProviderError("malformed", f"{PROVIDER} answered 200 with an unreadable response") from exc


async def check(client: genai.client.AsyncClient) -> None:
    """Lists one model: free, and refused for a bad key."""
    await _call(client, client.models.list(config={"page_size": 1}))


def _contents(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the results
    for m in messages:
        role, text = m["role"], m.get("content") or ""
        parts: list[dict[str, Any]] = [{"text": text}] if text else []
        if role == "system":
            system.append(text)
            continue
        if role == "tool":
            call_id = m.get("tool_call_id", "")
            response = {"id": call_id, "name": m.get("name") or names.get(call_id, ""), "response": _result(text)}
            role, parts = "user", [{"function_response": response}]
        elif role == "assistant":
            role = "model"
            for n, c in enumerate(m.get("tool_calls") or []):
                names[c["id"]] = c["name"]
                part: dict[str, Any] = {"function_call": {"id": c["id"], "name": c["name"], "args": _arguments(c)}}
                if n == 0:
                    part["thought_signature"] = REPLAYED_SIGNATURE
                parts.append(part)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return "\n\n".join(system), contents


def _arguments(call: dict[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(call["arguments"] or "{}")
    except ValueError:
        return {"arguments": call["arguments"]}
    return value if isinstance(value, dict) else {"arguments": value}


def _result(text: str) -> dict[str, Any]:
    """A tool result as the object Google wants: a JSON object as is, anything else under "result"."""
    try:
        value = json.loads(text)
    except ValueError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}


def _declaration(tool: dict[str, Any]) -> dict[str, Any]:
    out = {
        "name": tool["name"],
        "parameters_json_schema": tool.get("parameters") or {"type": "object", "properties": {}},
    }
    if tool.get("description"):
        out["description"] = tool["description"]
    return out


def _completion(response: types.GenerateContentResponse) -> Completion:
    if not response.candidates:
        blocked = response.prompt_feedback.block_reason if response.prompt_feedback else None
        if blocked:
            raise ProviderError("refused", f"{PROVIDER} blocked the prompt ({blocked})")
        raise ProviderError("malformed", f"{PROVIDER} answered without a candidate")
    candidate = response.candidates[0]
    reason = candidate.finish_reason.value if candidate.finish_reason else "STOP"
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    texts = [p.text for p in parts if p.text and not p.thought]
    function_calls = [p.function_call for p in parts if p.function_call]
    calls = [
        ToolCall(id=f.id or f"call_{n}", name=f.name or "", arguments=json.dumps(f.args or {}))
        for n, f in enumerate(function_calls)
    ]
    if reason in _REFUSED and not texts and not calls:
        raise ProviderError("refused", f"{PROVIDER} refused to answer ({reason})")
    usage = response.usage_metadata
    return Completion(
        text="".join(texts),
        tool_calls=calls,
        input_tokens=int(usage.prompt_token_count or 0) if usage else 0,
        output_tokens=int((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)) if usage else 0,
        finish_reason="tool_calls" if calls and reason == "STOP" else _FINISH.get(reason, reason),
    )


async def _call(client: genai.client.AsyncClient, pending: Any) -> Any:
    """Awaits one SDK call, mapping every failure to a ProviderError."""
    api_key = client._api_client.api_key or ""
    try:
        return await pending
    except errors.APIError as exc:
        raise _status_error(exc, api_key) from None
    except (TimeoutError, httpx2.TimeoutException):
        raise ProviderError("timeout", f"{PROVIDER} did not answer within the request timeout") from None
    except (aiohttp.ClientError, httpx2.TransportError, OSError) as exc:
        raise ProviderError("connection", f"cannot reach {PROVIDER}: {type(exc).__name__}") from None
    except ValueError:
        # A 200 whose body is not JSON (json's error is a ValueError), or not a response (pydantic's too).
        raise ProviderError("malformed", f"{PROVIDER} answered 200 with a body that is not a response") from None


def _status_error(exc: errors.APIError, api_key: str) -> ProviderError:
    status, text = int(exc.code or 0), str(exc.message or "")
    details = exc.details.get("error", {}).get("details", []) if isinstance(exc.details, dict) else []
    reasons = {d.get("reason") for d in details if isinstance(d, dict)}
    kind = None
    if "API_KEY_INVALID" in reasons or status in (401, 403):
        kind = "auth"
    elif _SPEND.search(text):
        kind = "spend_limit"
    elif status >= 500 and _OVERLOADED.search(text):
        kind = "overloaded"
    headers = exc.response.headers if exc.response is not None else None
    retry_after = retry_after_s(headers)
    for d in details if retry_after is None else []:
        # RetryInfo's retryDelay, e.g. "22s" or "0.5s".
        delay = d.get("retryDelay") if isinstance(d, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            retry_after = float(delay[:-1])
    return http_error(PROVIDER, status, text, api_key, headers=headers, kind=kind, retry_after=retry_after)
