"""One keyset page of a tenant's rows, newest first.

Every listed table has ``tenant_id``, ``id`` and ``created_at``; the page token is
the id of the last row of the previous page.
"""

from __future__ import annotations

from typing import TypeVar

from psycopg import sql
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

T = TypeVar("T")


async def newest_first(
    pool: AsyncConnectionPool,
    row_type: type[T],
    table: str,
    tenant_id: str,
    size: int,
    after: str,
    filters: dict[str, int] | None = None,
) -> tuple[list[T], str]:
    """Up to ``size`` rows after the row ``after``, and the next page token ('' on the last page).

    ``filters`` are ``column = value`` conditions, each applied only when its value is not 0
    (the proto's UNSPECIFIED).
    """
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
    return found[:size], (getattr(found[size - 1], "id") if len(found) > size else "")  # noqa: B009
