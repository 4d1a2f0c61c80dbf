"""What every provider adapter takes and gives back.

An adapter is a module with three functions (see ``services/teacher/providers/__init__.py``):

    connect(credentials) -> client        the vendor's async SDK client, its own retries off
    complete(client, request) -> Completion
    check(client) -> None                 a cheap call that proves the key works

and maps every failure to one ``ProviderError`` whose ``kind`` says what the engine does:
retry it (``RETRYABLE``), fail the whole job (``JOB_FATAL``), or fail only this row.
Messages never hold the key: adapters build them from the status and the vendor's
error text with the key scrubbed out (``scrub``).
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Retried with backoff (honouring retry-after when the provider sends one).
RETRYABLE = frozenset({"rate_limited", "overloaded", "server_error", "timeout", "connection", "malformed"})
# The job stops at once with the message: no other row can do better.
JOB_FATAL = frozenset({"auth", "spend_limit", "invalid_request"})
# Only this row fails (its input is too long for the model, the answer was refused...).
ROW_FATAL = frozenset({"input_too_long", "refused"})


class ProviderError(Exception):
    def __init__(self, kind: str, message: str, *, status: int = 0, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    @property
    def job_fatal(self) -> bool:
        return self.kind in JOB_FATAL


@dataclass(frozen=True)
class Credentials:
    api_key: str = field(repr=False)
    # Empty: the vendor's own endpoint.
    base_url: str = ""
    # False when the tenant's own key pays (BYOK usage is not billed).
    billed: bool = True
    timeout_s: float = 120.0


@dataclass(frozen=True)
class Request:
    model: str
    # OpenAI chat shape: {"role": "system"|"user"|"assistant"|"tool", "content": str}; an assistant
    # message may carry "tool_calls": [{"id", "name", "arguments": JSON text}], a tool message
    # "tool_call_id" and "name".
    messages: list[dict[str, Any]]
    # Canonical tools: {"name", "description", "parameters": JSON Schema object}.
    tools: list[dict[str, Any]] = field(default_factory=list)
    temperature: float | None = None
    max_output_tokens: int = 512
    # Structured output: the answer is JSON following this schema (Completion.text holds it).
    response_schema: dict[str, Any] | None = None
    seed: int | None = None


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    # The arguments as the model wrote them (JSON text, not parsed: verification parses it).
    arguments: str


@dataclass(frozen=True)
class Completion:
    text: str
    tool_calls: list[ToolCall]
    input_tokens: int
    output_tokens: int
    # "stop", "length", "tool_calls", or the vendor's own word.
    finish_reason: str = "stop"


def scrub(text: str, api_key: str) -> str:
    """``text`` with the key, and any 4+ character run of its start or end, blanked out."""
    if not api_key:
        return text
    text = text.replace(api_key, "[key]")
    for n in range(len(api_key) - 1, 3, -1):
        text = text.replace(api_key[:n], "[key]").replace(api_key[-n:], "[key]")
    return text


# What the vendors (and vLLM / llama.cpp) say when the prompt does not fit the model's context.
_TOO_LONG = re.compile(
    r"context[ _]length|context (size|window|limit)|maximum context|prompt is too long|input is too long"
    r"|too many (input )?tokens|input token count|exceeds? the maximum number of tokens|exceed_context",
    re.IGNORECASE,
)


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date); None if absent."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        when = email.utils.parsedate_tz(value)
        if when is not None:
            return max(0.0, email.utils.mktime_tz(when) - time.time())
    return None


def http_error(
    provider: str,
    status: int,
    vendor_text: str,
    api_key: str,
    *,
    headers: Mapping[str, str] | None = None,
    kind: str | None = None,
    retry_after: float | None = None,
) -> ProviderError:
    """The ``ProviderError`` for an HTTP error answer.

    ``kind`` overrides what the status alone says, for what only the vendor's body tells
    (a spend limit behind a 429, an overloaded model behind a 503, a bad key behind a 400).
    The vendor's text is never shown for a refused key: some vendors echo part of it.
    """
    text = scrub(" ".join(vendor_text.split())[:500], api_key)
    if kind is None:
        if status in (401, 403):
            kind = "auth"
        elif status == 429:
            kind = "rate_limited"
        elif status == 529:
            kind = "overloaded"
        elif status >= 500:
            kind = "server_error"
        elif status == 408:
            kind = "timeout"
        elif status == 413 or _TOO_LONG.search(vendor_text):
            kind = "input_too_long"
        else:
            kind = "invalid_request"
    messages = {
        "auth": f"the {provider} key was refused ({status}): set a new one with `distillery keys set {provider}`",
        "spend_limit": f"the {provider} account is out of quota or credit ({status}): {text}",
        "rate_limited": f"{provider} rate limit reached ({status}): {text}",
        "overloaded": f"{provider} is overloaded ({status}): {text}",
        "server_error": f"{provider} server error ({status}): {text}",
        "timeout": f"{provider} timed out ({status}): {text}",
        "input_too_long": f"the input is too long for the {provider} model ({status}): {text}",
    }
    message = messages.get(kind, f"{provider} refused the request ({status}): {text}")
    if retry_after is None:
        retry_after = retry_after_s(headers)
    return ProviderError(kind, message, status=status, retry_after_s=retry_after)
