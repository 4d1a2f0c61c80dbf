"""Captured traffic: requests through the gateway that asked to be stored, with their answers.

The gateway calls ``capture`` (CaptureTraffic, service token only) after answering a request
with ``"store": true`` (or through a key that stores traffic): one record holds the request's
model ("mdl_..." or, in proxy mode, "<provider>:<model>"), its source ("endpoint" or
"proxy"), its metadata tags, the request ``{"messages", "tools", ...}`` and the answer (one
assistant message) as JSON, and the token counts. Only the body's chat fields are kept
(``REQUEST_FIELDS``): nothing else the gateway passes, and never a header, is stored.

Bounds, so one record always travels in one gRPC message: a request of at most
``MAX_REQUEST_CHARS``, an answer of at most ``MAX_RESPONSE_CHARS``, at most ``MAX_TAGS``
tags of ``MAX_TAG_KEY_CHARS``/``MAX_TAG_VALUE_CHARS`` (OpenAI's stored-completion limits).

``list_page`` reads a tenant's records newest first, ``oldest_first`` the newest N oldest first, filtered by tags (every
given tag must match: ``metadata @>``, GIN-indexed), model and time. Content is the tenant's
alone and is never logged.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from services.common.errors import InvalidArgument
from services.common.ids import check_text
from services.common.paging import page_token, row_after

TABLE = "traffic"
SOURCES = ("endpoint", "proxy")
MAX_REQUEST_CHARS = 3 * 1024 * 1024
MAX_RESPONSE_CHARS = 512 * 1024
MAX_TAGS = 16
MAX_TAG_KEY_CHARS = 64
MAX_TAG_VALUE_CHARS = 512
MAX_MODEL_CHARS = 256
# A list page stops before its records' JSON passes this, so a page fits a client's 4 MiB message.
MAX_PAGE_CHARS = 3 * 1024 * 1024 + 600 * 1024
# The chat fields of a request body that are kept; anything else is dropped.
REQUEST_FIELDS = frozenset({
    "messages", "tools", "tool_choice", "parallel_tool_calls", "response_format", "temperature", "top_p",
    "max_tokens", "max_completion_tokens", "stop", "seed", "n", "presence_penalty", "frequency_penalty",
})  # fmt: skip


@dataclass(frozen=True)
class Record:
    tenant_id: str
    id: str
    model: str
    source: str
    metadata: dict[str, str]
    request_json: str
    response_json: str
    prompt_tokens: int
    completion_tokens: int
    created_at: datetime


@dataclass(frozen=True)
class Filters:
    """Which records: every tag must match; "" model and None since match all."""

    tags: dict[str, str]
    model: str = ""
    since: datetime | None = None


def new_traffic_id() -> str:
    return "trf_" + secrets.token_hex(10)


def check_tags(tags: dict[str, str], field: str = "metadata") -> dict[str, str]:
    """Metadata tags within OpenAI's stored-completion bounds, printable, or INVALID_ARGUMENT naming ``field``."""
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"{field} has {len(tags)} tags: give at most {MAX_TAGS}", field=field)
    for key, value in tags.items():
        if not key:
            raise InvalidArgument(f"{field} has an empty tag name: tags are name=value", field=field)
        check_text(key, f"{field} tag name {key[:40]!r}", MAX_TAG_KEY_CHARS)
        check_text(value, f"{field}[{key[:40]}]", MAX_TAG_VALUE_CHARS)
    return dict(tags)


def check_since(since: Any) -> datetime:
    """A ``since`` Timestamp as a datetime, or INVALID_ARGUMENT when it is not a time from 1970 to 9999."""
    try:
        if since.seconds < 0 or not 0 <= since.nanos < 1_000_000_000:
            raise ValueError
        return since.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidArgument("since must be a time from 1970 to 9999 (UTC)", field="since") from None


def check_model(model: str, field: str = "model") -> str:
    return check_text(model.strip(), field, MAX_MODEL_CHARS)


def _object(text: str, field: str, limit: int, shape: str) -> dict[str, Any]:
    if len(text) > limit:
        raise InvalidArgument(f"{field} is {len(text)} characters long, over the {limit} a captured record may "
                              f"hold: the request is not stored", field=field)  # fmt: skip
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be a JSON object, {shape}", field=field)
    try:  # a lone surrogate escape ("\ud800") is JSON, but no text: no dataset row could hold it
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise InvalidArgument(f"{field} holds a \\u escape that is not a character (a lone surrogate): send "
                              "valid Unicode text", field=field) from None  # fmt: skip
    return value


def checked_record(model: str, source: str, tags: dict[str, str], request_json: str, response_json: str) -> Record:
    """What ``capture`` stores of a record the gateway sent (no id, tenant or time yet)."""
    if not check_model(model, "record.model"):
        raise InvalidArgument('record.model is required: "mdl_..." or "<provider>:<model>"', field="record.model")
    if source not in SOURCES:
        raise InvalidArgument(f"record.source {source[:40]!r} must be one of {', '.join(SOURCES)}",
                              field="record.source")  # fmt: skip
    request = _object(request_json, "record.request_json", MAX_REQUEST_CHARS, '{"messages": [...], "tools": [...]}')
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("record.request_json needs a non-empty messages list (OpenAI chat messages)",
                              field="record.request_json")  # fmt: skip
    _object(response_json, "record.response_json", MAX_RESPONSE_CHARS, 'one assistant message {"role", "content"}')
    kept = {k: v for k, v in request.items() if k in REQUEST_FIELDS}
    if len(kept) != len(request):
        request_json = json.dumps(kept, ensure_ascii=False)
    return Record("", "", model.strip(), source, check_tags(tags, "record.metadata"), request_json, response_json,
                  0, 0, None)  # type: ignore[arg-type]  # fmt: skip


_COLUMNS = sql.SQL(
    "tenant_id, id, model, source, metadata, request_json::text AS request_json,"
    " response_json::text AS response_json, prompt_tokens, completion_tokens, created_at"
)


async def capture(
    pool: AsyncConnectionPool, tenant_id: str, record: Record, prompt_tokens: int, completion_tokens: int
) -> Record:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Record))
        await cur.execute(
            sql.SQL(
                "INSERT INTO traffic (tenant_id, id, model, source, metadata, request_json, response_json,"
                " prompt_tokens, completion_tokens) VALUES (%s, %s, %s, %s, %s, %s::json, %s::json, %s, %s)"
                " RETURNING {}"
            ).format(_COLUMNS),
            (tenant_id, new_traffic_id(), record.model, record.source, Jsonb(record.metadata), record.request_json,
             record.response_json, prompt_tokens, completion_tokens),
        )  # fmt: skip
        stored = await cur.fetchone()
    assert stored is not None
    return stored


def _where(tenant_id: str, filters: Filters) -> tuple[list[sql.Composable], dict[str, Any]]:
    conditions: list[sql.Composable] = [sql.SQL("tenant_id = %(t)s")]
    params: dict[str, Any] = {"t": tenant_id}
    if filters.tags:
        conditions.append(sql.SQL("metadata @> %(tags)s"))
        params["tags"] = Jsonb(filters.tags)
    if filters.model:
        conditions.append(sql.SQL("model = %(model)s"))
        params["model"] = filters.model
    if filters.since is not None:
        conditions.append(sql.SQL("created_at >= %(since)s"))
        params["since"] = filters.since
    return conditions, params


async def list_page(
    pool: AsyncConnectionPool, tenant_id: str, filters: Filters, size: int, token: str
) -> tuple[list[Record], str]:
    """Up to ``size`` matching records after the page token, newest first, and the next page token."""
    after = row_after(TABLE, tenant_id, token)
    conditions, params = _where(tenant_id, filters)
    if after:
        conditions.append(sql.SQL(
            "(created_at, id) < (SELECT created_at, id FROM traffic WHERE tenant_id = %(t)s AND id = %(after)s)"
        ))  # fmt: skip
        params["after"] = after
    params["n"] = size + 1
    query = sql.SQL("SELECT {} FROM traffic WHERE {} ORDER BY created_at DESC, id DESC LIMIT %(n)s").format(
        _COLUMNS, sql.SQL(" AND ").join(conditions)
    )
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(Record))
        await cur.execute(query, params)
        found = await cur.fetchall()
    page: list[Record] = []
    chars = 0
    for record in found[:size]:
        chars += len(record.request_json) + len(record.response_json)
        if page and chars > MAX_PAGE_CHARS:
            break
        page.append(record)
    if len(page) == len(found):
        return page, ""
    return page, page_token(TABLE, tenant_id, page[-1].id)


async def oldest_first(
    pool: AsyncConnectionPool, tenant_id: str, filters: Filters, limit: int
) -> AsyncGenerator[Record, None]:
    """The newest ``limit`` records that match, oldest first, read through a server-side cursor (a
    record may hold megabytes: they are never all in memory at once). Close it with ``aclosing``."""
    conditions, params = _where(tenant_id, filters)
    params["n"] = limit
    query = sql.SQL(
        "SELECT * FROM (SELECT {} FROM traffic WHERE {} ORDER BY created_at DESC, id DESC LIMIT %(n)s) newest"
        " ORDER BY created_at, id"
    ).format(_COLUMNS, sql.SQL(" AND ").join(conditions))
    async with pool.connection() as conn, conn.transaction():
        cur = conn.cursor("traffic_rows", row_factory=class_row(Record))
        cur.itersize = 64
        await cur.execute(query, params)
        async for record in cur:
            yield record
