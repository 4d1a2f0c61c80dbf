"""One keyset page of a tenant's rows, newest first.

Every listed table has ``tenant_id``, ``id`` and ``created_at``. The page token names the
last row of the previous page, signed: ``<id>.<mac>``, the mac an HMAC-SHA256 of the table,
the tenant and the id under the service's page key. A token that is not one this service gave
(for this list and this tenant), altered or forged, is INVALID_ARGUMENT naming
``page.page_token``.

The page key is derived from the service token (``DISTILLERY_SERVICE_TOKEN``, which every
instance of every service shares, so any instance takes another's tokens); without one (tests,
a service run by hand) from a random key of the process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from typing import TypeVar

from psycopg import sql
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from services.common.errors import InvalidArgument

T = TypeVar("T")

MAX_TOKEN_CHARS = 256
_FIELD = "page.page_token"
_key: bytes | None = None


def _page_key() -> bytes:
    global _key
    if _key is None:
        secret = os.environ.get("DISTILLERY_SERVICE_TOKEN", "").encode() or secrets.token_bytes(32)
        _key = hmac.new(secret, b"distillery page tokens v1", hashlib.sha256).digest()
    return _key


def _mac(table: str, tenant_id: str, row_id: str) -> str:
    digest = hmac.new(_page_key(), f"{table}\x1f{tenant_id}\x1f{row_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def page_token(table: str, tenant_id: str, row_id: str) -> str:
    """The token of the page after the row ``row_id`` of ``table``, for ``tenant_id`` only."""
    return f"{row_id}.{_mac(table, tenant_id, row_id)}"


def row_after(table: str, tenant_id: str, token: str) -> str:
    """The row id a page token names ("" for the first page); refuses a token this service did not give."""
    if not token:
        return ""
    row_id, dot, mac = token.rpartition(".")
    if len(token) > MAX_TOKEN_CHARS or not dot or not row_id or not token.isprintable():
        raise InvalidArgument("page_token is not one this list gave; pass the next_page_token of the previous "
                              "page, or none for the first page", field=_FIELD)  # fmt: skip
    if not hmac.compare_digest(mac.encode(), _mac(table, tenant_id, row_id).encode()):
        raise InvalidArgument("page_token was altered or is not one this list gave; pass the next_page_token of "
                              "the previous page, or none for the first page", field=_FIELD)  # fmt: skip
    return row_id


async def newest_first(
    pool: AsyncConnectionPool,
    row_type: type[T],
    table: str,
    tenant_id: str,
    size: int,
    after: str,
    filters: dict[str, int] | None = None,
) -> tuple[list[T], str]:
    """Up to ``size`` rows after the page token ``after``, and the next page token ('' on the last page).

    ``filters`` are ``column = value`` conditions, each applied only when its value is not 0
    (the proto's UNSPECIFIED).
    """
    after = row_after(table, tenant_id, after)
    conditions: list[sql.Composable] = [sql.SQL("tenant_id = %(t)s")]
    params: dict[str, object] = {"t": tenant_id, "after": after, "n": size + 1}
    for i, (column, value) in enumerate((filters or {}).items()):
        if value:
            conditions.append(sql.SQL("{} = %(f{})s").format(sql.Identifier(column), sql.Literal(i)))
            params[f"f{i}"] = value
    query = sql.SQL(
        "SELECT * FROM {table} WHERE {where} AND (%(after)s = '' OR (created_at, id) <"
        " (SELECT created_at, id FROM {table} WHERE tenant_id = %(t)s AND id = %(after)s))"
        " ORDER BY created_at DESC, id DESC LIMIT %(n)s"
    ).format(table=sql.Identifier(table), where=sql.SQL(" AND ").join(conditions))
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(row_type))
        await cur.execute(query, params)
        found = await cur.fetchall()
    if len(found) <= size:
        return found, ""
    return found[:size], page_token(table, tenant_id, getattr(found[size - 1], "id"))  # noqa: B009
