"""distillery traffic: what the gateway captured (requests sent with "store": true, or through a key
that stores traffic), and the filters `datasets from-traffic` shares (--tag, --since)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from google.protobuf import timestamp_pb2

from distillery.cli.output import as_dict, json_option, print_json, print_table, rpc_errors
from distillery.client import Client
from distillery.ingest.v1 import ingest_pb2

_AGO = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
PREVIEW_WORDS = 8
PAGE_SIZE = 100


def parse_tags(values: tuple[str, ...]) -> dict[str, str]:
    """``("task=support", "env=prod")`` as a dict; a value without "=" is a usage error."""
    tags: dict[str, str] = {}
    for value in values:
        key, eq, tag = value.partition("=")
        if not eq or not key.strip():
            raise click.BadParameter(f"{value!r} is not KEY=VALUE (e.g. --tag task=support)", param_hint="--tag")
        tags[key.strip()] = tag.strip()
    return tags


def parse_since(value: str) -> datetime | None:
    """A date (2026-12-01, UTC), a date and time (2026-12-01T09:30, UTC unless it says), or a time ago
    (30m, 1h, 7d, 2w)."""
    if not value:
        return None
    text = value.strip()
    if ago := _AGO.match(text):
        return datetime.now(UTC) - timedelta(**{_UNITS[ago.group(2)]: int(ago.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a date (2026-12-01), a time (2026-12-01T09:30) or a time ago (30m, 1h, 7d, 2w)",
            param_hint="--since",
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def since_stamp(since: datetime | None) -> timestamp_pb2.Timestamp | None:
    if since is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(since.astimezone(UTC))
    return stamp


def tag_option(required: bool) -> Callable[[Callable[..., None]], Callable[..., None]]:
    what = "at least one" if required else "repeatable"
    return click.option("--tag", "tags", multiple=True, required=required, metavar="KEY=VALUE",
                        help=f"A metadata tag the request was sent with; every one must match ({what}).")  # fmt: skip


def since_option(command: Callable[..., None]) -> Callable[..., None]:
    return click.option("--since", default="", metavar="WHEN",
                        help="Only traffic from then on: 2026-12-01, 2026-12-01T09:30 (UTC), or 30m, 1h, 7d, 2w ago.",
                        )(command)  # fmt: skip


def last_user_words(request_json: str, words: int = PREVIEW_WORDS) -> str:
    """The first words of the request's last user message."""
    try:
        messages = json.loads(request_json).get("messages") or []
    except (ValueError, AttributeError):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            said = str(content or "").split()
            return " ".join(said[:words]) + (" ..." if len(said) > words else "")
    return ""


@click.group("traffic")
def group() -> None:
    """Captured traffic: requests to the endpoint sent with "store": true (or a key that stores them)."""


@group.command("list")
@tag_option(required=False)
@click.option("--model", default="", help='Only requests to this model ("mdl_..." or "openai:gpt-4.1-mini").')
@since_option
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Show at most this many.")
@json_option
def list_(tags: tuple[str, ...], model: str, since: str, limit: int, as_json: bool) -> None:
    """List captured requests, newest first."""
    request = ingest_pb2.ListTrafficRequest(metadata=parse_tags(tags), model=model,
                                            since=since_stamp(parse_since(since)))  # fmt: skip
    records: list[Any] = []
    with rpc_errors():
        client = Client.from_environment()
        while len(records) < limit:
            request.page.page_size = min(PAGE_SIZE, limit - len(records))
            reply = client.ingest.ListTraffic(request)
            records += reply.records
            if not reply.page.next_page_token:
                break
            request.page.page_token = reply.page.next_page_token
    if as_json:
        print_json([as_dict(r) for r in records])
        return
    rows = [
        (r.id, r.created_at.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S"), r.model, r.source,
         " ".join(f"{k}={v}" for k, v in sorted(r.metadata.items())), last_user_words(r.request_json))
        for r in records
    ]  # fmt: skip
    print_table("Traffic", ["id", "time (UTC)", "model", "source", "tags", "last user message"], rows)
