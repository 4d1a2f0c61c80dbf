"""One chat request answered by an outside provider with the tenant's key: the gateway's proxy mode.

``complete`` checks the request (``messages_json`` a JSON list of OpenAI chat messages,
``tools_json`` canonical tools, the schema of a structured answer), picks the tenant's
credentials (``KeyStore.credentials``: the tenant's own key first), and sends it through the
provider's adapter and shared ``Limiter`` with a job row's retries (``engine.complete_one``).
The call's token usage is ``record``ed per tenant, as DescribeTool's and JudgeAnswers' are.

The key never leaves the teacher: provider errors are scrubbed of it (``scrub``) and the
request's content is never logged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from psycopg_pool import AsyncConnectionPool

from services.common.canonical_tools import NAME
from services.common.errors import DistilleryError, FailedPrecondition, InvalidArgument, Unavailable
from services.teacher import engine, providers
from services.teacher.keys import KeyStore, close_client, refused_key
from services.teacher.limits import Limiter
from services.teacher.providers.base import Completion, Credentials, ProviderError, Request, scrub

# What a request may hold.
MAX_MESSAGES_CHARS = 4 * 1024 * 1024
MAX_MESSAGES = 2000
MAX_OUTPUT_TOKENS = 32_768
# max_tokens 0: the teacher's default answer budget.
DEFAULT_OUTPUT_TOKENS = 1024
ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass(frozen=True)
class Completed:
    """The provider's answer, and what the call used."""

    completion: Completion
    requests: int  # tries sent to the provider
    billed: bool  # false: the tenant's own key paid

    @property
    def finish_reason(self) -> str:
        """ "stop", "length" or "tool_calls", whatever the vendor's word."""
        if self.completion.tool_calls:
            return "tool_calls"
        return "length" if self.completion.finish_reason in ("length", "max_tokens", "MAX_TOKENS") else "stop"


async def complete(
    keys: KeyStore,
    limiters: Mapping[str, Limiter],
    tenant_id: str,
    request: Any,
    *,
    attempts: int,
    max_backoff_s: float,
) -> Completed:
    """The whole Complete call: check the request, pick the tenant's credentials, ask the provider."""
    provider, model = split_model(request.model)
    wanted = Request(
        model=model,
        messages=read_messages(request.messages_json),
        tools=read_tools(list(request.tools_json)),
        temperature=request.temperature if request.HasField("temperature") else None,
        max_output_tokens=request.max_tokens or DEFAULT_OUTPUT_TOKENS,
        response_schema=read_schema(request.response_schema_json),
    )
    credentials = await keys.credentials(tenant_id, provider)
    adapter = providers.PROVIDERS[provider]
    client = adapter.connect(credentials)
    try:
        outcome = await engine.complete_one(wanted, partial(adapter.complete, client), limiters[provider],
                                            max_attempts=attempts, max_backoff_s=max_backoff_s)  # fmt: skip
    except ProviderError as err:
        raise provider_error(provider, credentials, err) from None
    finally:
        await close_client(adapter, client)
    if outcome.completion is None:
        raise provider_error(provider, credentials, ProviderError(outcome.error_kind, outcome.message),
                             attempts=outcome.attempts)  # fmt: skip
    return Completed(outcome.completion, outcome.attempts, credentials.billed)


async def record(pool: AsyncConnectionPool, tenant_id: str, teacher: str, completed: Completed) -> None:
    """Keep the call's token usage (never its content), as a job keeps its rows'."""
    completion = completed.completion
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO completions (tenant_id, teacher, requests, input_tokens, output_tokens, billed)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (tenant_id, teacher, completed.requests, completion.input_tokens, completion.output_tokens,
             completed.billed),
        )  # fmt: skip


def split_model(model: str) -> tuple[str, str]:
    """``"<provider>:<model>"`` as (provider, model), refused naming the ``model`` field."""
    try:
        return providers.split_teacher(model)
    except InvalidArgument as err:
        raise InvalidArgument(err.message.replace("teacher ", "model ", 1), field="model") from None


def read_messages(text: str) -> list[dict[str, Any]]:
    """The conversation as the adapters take it (``base.Request.messages``), or INVALID_ARGUMENT saying where."""
    try:
        messages = json.loads(text) if text.strip() else None
    except (json.JSONDecodeError, RecursionError) as err:
        reason = err.msg if isinstance(err, json.JSONDecodeError) else "it nests too deeply"
        raise InvalidArgument(f"messages_json is not JSON ({reason}): give a JSON list of chat messages",
                              field="messages_json") from None  # fmt: skip
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument(
            'messages_json must be a non-empty JSON list of chat messages ({"role": "user", "content": "..."})',
            field="messages_json",
        )
    if len(messages) > MAX_MESSAGES:
        raise InvalidArgument(f"messages_json has {len(messages)} messages: give at most {MAX_MESSAGES}",
                              field="messages_json")  # fmt: skip
    return [_message(i, m) for i, m in enumerate(messages)]


def _message(i: int, message: Any) -> dict[str, Any]:
    where = f"messages_json[{i}]"
    if not isinstance(message, dict):
        raise InvalidArgument(f"{where} is not a JSON object: give {{\"role\": ..., \"content\": ...}}",
                              field="messages_json")  # fmt: skip
    role = message.get("role")
    if role not in ROLES:
        raise InvalidArgument(f"{where} has role {str(role)[:40]!r}: use one of {', '.join(ROLES)}",
                              field="messages_json")  # fmt: skip
    out: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": _content(where, message)}
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidArgument(f"{where} is a tool result without a tool_call_id: give the id of the call it "
                                  "answers", field="messages_json")  # fmt: skip
        out["tool_call_id"] = call_id
        if isinstance(message.get("name"), str):
            out["name"] = message["name"]
    calls = message.get("tool_calls")
    if calls:
        if role != "assistant" or not isinstance(calls, list):
            raise InvalidArgument(f"{where}: tool_calls must be a list, on an assistant message",
                                  field="messages_json")  # fmt: skip
        out["tool_calls"] = [_tool_call(f"{where}.tool_calls[{n}]", n, c) for n, c in enumerate(calls)]
    elif out["content"] is None:
        raise InvalidArgument(f"{where} has no content: give its text", field="messages_json")
    return out


def _content(where: str, message: dict[str, Any]) -> str | None:
    """The text of a message: a string, or text content parts joined; None when absent."""
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) == len(content) and all(isinstance(t, str) for t in texts):
            return "".join(texts)  # type: ignore[arg-type]
    raise InvalidArgument(f"{where} content must be text (a string, or a list of text parts): other parts "
                          "(images, audio) are not sent to outside providers", field="messages_json")  # fmt: skip


def _tool_call(where: str, n: int, call: Any) -> dict[str, str]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise InvalidArgument(f'{where} must be {{"id", "type": "function", "function": {{"name", "arguments"}}}}',
                              field="messages_json")  # fmt: skip
    arguments = function.get("arguments")
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments, ensure_ascii=False)
    if not isinstance(arguments, str):
        raise InvalidArgument(f"{where}: function.arguments must be JSON text", field="messages_json")
    call_id = call.get("id")
    call_id = call_id if isinstance(call_id, str) and call_id else f"call_{n}"
    return {"id": call_id, "name": function["name"], "arguments": arguments or "{}"}


def read_tools(texts: list[str]) -> list[dict[str, Any]]:
    """Canonical tools ({name, description, parameters}) from their JSON texts."""
    tools = []
    for i, text in enumerate(texts):
        where = f"tools_json[{i}]"
        try:
            tool = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise InvalidArgument(f"{where} is not JSON: give a tool as {{name, description, parameters}}",
                                  field=where) from None  # fmt: skip
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not NAME.match(tool["name"]):
            raise InvalidArgument(f"{where} needs a name of letters, digits, _ and - (at most 64): give a tool as "
                                  "{name, description, parameters}", field=where)  # fmt: skip
        parameters = tool.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict) or not isinstance(tool.get("description", ""), str):
            raise InvalidArgument(f"{where}: parameters must be a JSON Schema object and description a text",
                                  field=where)  # fmt: skip
        tools.append({"name": tool["name"], "description": tool.get("description", ""), "parameters": parameters})
    return tools


def read_schema(text: str) -> dict[str, Any] | None:
    if not text.strip():
        return None
    try:
        schema = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        schema = None
    if not isinstance(schema, dict):
        raise InvalidArgument("response_schema_json must be a JSON Schema object, as JSON text",
                              field="response_schema_json")  # fmt: skip
    return schema


def provider_error(provider: str, credentials: Credentials, err: ProviderError, attempts: int = 1) -> DistilleryError:
    """What a provider's failure means for the caller, the key scrubbed out."""
    said = scrub(err.message, credentials.api_key)
    if err.kind == "auth":
        return FailedPrecondition(f"{refused_key(provider, credentials)} ({said})", field="model")
    if err.kind == "spend_limit":
        return FailedPrecondition(f"the {provider} account cannot pay for requests: {said}", field="model")
    if err.kind == "input_too_long":
        return InvalidArgument(f"the conversation is too long for the {provider} model: {said}",
                               field="messages_json")  # fmt: skip
    if err.kind == "invalid_request":
        return InvalidArgument(f"{provider} refused the request: {said}", field="model")
    if err.kind == "refused":
        return FailedPrecondition(f"{provider} declined to answer: {said}", field="messages_json")
    tries = f" after {attempts} tries" if attempts > 1 else ""
    return Unavailable(f"{provider} did not answer ({err.kind}{tries}): {said}; try again shortly")
