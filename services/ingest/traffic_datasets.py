"""A dataset version from captured traffic (CreateDatasetFromTraffic), validated exactly like an upload.

``from_traffic`` reads the tenant's newest matching records (every tag must match; at least
one tag is required, so a dataset is always scoped to a task), turns each into one row of
the requested kind, and hands the rows, as one JSONL file, to ``Intake.upload``: the same
path, checks, near-duplicate warnings and storage as ``datasets upload``.

- pairs (``docs/datasets.md``): ``{"messages": [system..., user, ..., assistant]}``, the
  conversation as sent (developer messages as system ones, text parts joined) with the
  answer's text as the last assistant message. A record sent with no system message takes
  the request's ``system_prompt`` (a pairs row needs one). A record with a tool turn, an
  answer that calls a tool or has no text, content that is not text, or still no system
  message does not fit: counted in ``left_out_kind``.
- tool-calls (``tool_rows``): ``{"messages": [...], "tools": [...]}``, the answer (its text
  and ``tool_calls``) as the last assistant message. A record without tools does not fit.

Rows whose identity (``splits.normalised``, the one the splits compare by) is that of a row
on the eval side of any of the tenant's splits of that kind are left out and counted in
``left_out_eval``, so captured traffic never leaks an eval row into training. The rows are
written oldest first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from distillery.ingest.v1 import ingest_pb2
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.objects import ObjectStore
from services.ingest import splits, traffic
from services.ingest.intake import Intake, Outcome
from services.ingest.uploads import plan_of

DEFAULT_LIMIT = 10_000
MAX_LIMIT = 100_000
KINDS: dict[int, str] = {ingest_pb2.DATASET_KIND_PAIRS: "pairs", ingest_pb2.DATASET_KIND_TOOL_CALLS: "tool-calls"}
_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FromTraffic:
    outcome: Outcome
    records: int
    left_out_eval: int
    left_out_kind: int


def _text(content: Any) -> str | None:
    """Message content as text: a string, or text parts joined; None for anything else (images...)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    return None


def _role(message: Any) -> str:
    role = message.get("role") if isinstance(message, dict) else None
    return "system" if role == "developer" else role if isinstance(role, str) else ""


def pairs_row(request: dict[str, Any], answer: dict[str, Any], system_prompt: str = "") -> dict[str, Any] | None:
    """The pairs row of one record, or None when it does not fit a pairs dataset; ``system_prompt`` is the
    instruction of a record sent without one."""
    messages = []
    for message in request.get("messages") or ():
        role, text = _role(message), _text(message.get("content")) if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant") or text is None or message.get("tool_calls"):
            return None
        messages.append({"role": role, "content": text})
    if system_prompt.strip() and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    text = _text(answer.get("content"))
    if answer.get("tool_calls") or not text or not any(m["role"] == "system" for m in messages):
        return None
    return {"messages": [*messages, {"role": "assistant", "content": text}]}


def _tool(tool: Any) -> Any:
    """A tool as OpenAI writes it; a canonical {name, description, parameters} tool is wrapped."""
    if isinstance(tool, dict) and "function" not in tool and "name" in tool:
        return {"type": "function", "function": tool}
    return tool


def _message(message: Any) -> dict[str, Any] | None:
    if not isinstance(message, dict):
        return None
    out = {k: v for k, v in message.items() if k in ("role", "content", "tool_calls", "tool_call_id", "name")}
    out["role"] = _role(message)
    if out.get("content") is not None:
        out["content"] = _text(out["content"])
        if out["content"] is None:
            return None
    return out


def tool_calls_row(request: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any] | None:
    """The tool-calls row of one record, or None when it does not fit (no tools, or content that is not text)."""
    tools = request.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    messages = [_message(m) for m in request.get("messages") or ()]
    last = _message({**answer, "role": "assistant"})
    if last is None or any(m is None for m in messages) or not (last.get("content") or last.get("tool_calls")):
        return None
    if not last.get("tool_calls"):
        last.pop("tool_calls", None)
    return {"messages": [*messages, last], "tools": [_tool(t) for t in tools]}


def row_of(kind: int, record: traffic.Record, system_prompt: str = "") -> dict[str, Any] | None:
    try:
        request, answer = json.loads(record.request_json), json.loads(record.response_json)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(request, dict) or not isinstance(answer, dict):
        return None
    if kind == ingest_pb2.DATASET_KIND_PAIRS:
        return pairs_row(request, answer, system_prompt)
    return tool_calls_row(request, answer)


def _identity(line: str) -> bytes | None:
    """The row's identity as the splits compare rows (``splits.normalised``), hashed; None when it has none."""
    try:
        key = splits.normalised(line)
    except (KeyError, TypeError, AttributeError, ValueError):  # a row the validation will refuse anyway
        return None
    return hashlib.blake2b(key.encode(), digest_size=16).digest()


async def eval_identities(pool: AsyncConnectionPool, store: ObjectStore, tenant_id: str, kind: int) -> set[bytes]:
    """The identities of every row on the eval side of the tenant's splits of datasets of ``kind``."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT DISTINCT s.eval_key FROM splits s JOIN datasets d ON d.tenant_id = s.tenant_id"
            " AND d.id = s.dataset_id WHERE s.tenant_id = %s AND d.kind = %s",
            (tenant_id, kind),
        )
        keys = [key for (key,) in await cur.fetchall()]
    found: set[bytes] = set()
    for key in keys:
        data = await asyncio.to_thread(store.get_bytes, key)
        found.update(i for line in data.decode().splitlines() if line.strip() and (i := _identity(line)))
    return found


def check_request(tags: dict[str, str], kind: int, limit: int) -> tuple[int, int]:
    """The kind (pairs by default) and record limit of a request, or INVALID_ARGUMENT naming the field."""
    if not tags:
        raise InvalidArgument(
            "metadata needs at least one tag (e.g. task=support): a dataset from traffic is scoped to a task; "
            "`distillery traffic list` shows the tags captured",
            field="metadata",
        )
    traffic.check_tags(tags)
    kind = kind or ingest_pb2.DATASET_KIND_PAIRS
    if kind not in KINDS:
        raise InvalidArgument("kind must be pairs or tool-calls: captured traffic is chat", field="kind")
    if limit > MAX_LIMIT:
        raise InvalidArgument(f"limit is {limit}: take at most {MAX_LIMIT} records at once", field="limit")
    return kind, limit or DEFAULT_LIMIT


@dataclass
class _Tally:
    records: int = 0
    rows: int = 0
    left_out_eval: int = 0
    left_out_kind: int = 0
    size: int = 0


async def from_traffic(
    pool: AsyncConnectionPool,
    store: ObjectStore,
    intake: Intake,
    tenant_id: str,
    tags: dict[str, str],
    *,
    kind: int,
    since: datetime | None,
    limit: int,
    display_name: str,
    max_upload_bytes: int,
    system_prompt: str = "",
) -> FromTraffic:
    kind, limit = check_request(tags, kind, limit)
    scope = " ".join(f"{k}={v}" for k, v in sorted(tags.items())) + (f" since {since:%Y-%m-%d %H:%M}" if since else "")
    in_eval = await eval_identities(pool, store, tenant_id, kind)
    tally, digest = _Tally(), hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="traffic-", dir=intake.work_dir) as folder:
        path = Path(folder) / "traffic.jsonl"
        with path.open("wb") as out:
            records = traffic.oldest_first(pool, tenant_id, traffic.Filters(tags, since=since), limit)
            async with aclosing(records):
                async for record in records:
                    tally.records += 1
                    row = row_of(kind, record, system_prompt)
                    if row is None:
                        tally.left_out_kind += 1
                        continue
                    line = json.dumps(row, ensure_ascii=False)
                    if in_eval and _identity(line) in in_eval:
                        tally.left_out_eval += 1
                        continue
                    data = (line + "\n").encode()
                    tally.rows, tally.size = tally.rows + 1, tally.size + len(data)
                    if tally.size > max_upload_bytes:
                        raise InvalidArgument(f"the rows come to more than the upload limit of {max_upload_bytes} "
                                              "bytes: take fewer records (limit, since)", field="limit")  # fmt: skip
                    digest.update(data)
                    out.write(data)
        _check_made(tally, kind, scope)
        header = ingest_pb2.UploadHeader(
            filename="traffic.jsonl", kind=ingest_pb2.DatasetKind.ValueType(kind),
            format=ingest_pb2.FILE_FORMAT_JSONL, size_bytes=tally.size, sha256=digest.hexdigest(),
            display_name=display_name or f"traffic {scope}"[:200],
        )  # fmt: skip
        outcome = await intake.upload(tenant_id, plan_of(header, max_upload_bytes), "", 0, _chunks(path))
    return FromTraffic(outcome, tally.records, tally.left_out_eval, tally.left_out_kind)


def _check_made(tally: _Tally, kind: int, scope: str) -> None:
    """FAILED_PRECONDITION saying why, when no record matched or none made a row."""
    if not tally.records:
        raise FailedPrecondition(
            f'no captured traffic matches {scope}: capture some with "store": true and these metadata tags, '
            "or check the tags with `distillery traffic list`",
            field="metadata",
        )
    if not tally.rows:
        raise FailedPrecondition(
            f"none of the {tally.records} records matching {scope} makes a {KINDS[kind]} row: {tally.left_out_kind} "
            f"do not fit the kind{_FIT[kind]} and {tally.left_out_eval} are already in an eval set",
            field="kind" if tally.left_out_kind else "metadata",
        )


_FIT: dict[int, str] = {
    ingest_pb2.DATASET_KIND_PAIRS: " (a pairs row needs a system message, text turns and a text answer: give "
    "requests sent without one an instruction with --system-prompt, or try --kind tool-calls for tool traffic)",
    ingest_pb2.DATASET_KIND_TOOL_CALLS: " (a tool-calls row needs the request's tools: try --kind pairs)",
}


async def _chunks(path: Path) -> AsyncIterator[tuple[int, bytes]]:
    with path.open("rb") as f:
        while data := await asyncio.to_thread(f.read, _CHUNK_BYTES):
            yield 0, data
