"""How the CLI prints: JSON for --json, tables for people, errors without tracebacks."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click
import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

# Exit codes of every command.
OK, FAILED, USAGE, UNAVAILABLE = 0, 1, 2, 3

console = Console()
errors = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


_INT64 = {FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64}


def as_dict(message: Message) -> dict[str, Any]:
    """Proto JSON with field names as in the proto, and 64-bit integers as JSON numbers."""
    out = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _numbers(message, out)
    return out


def _numbers(message: Message, out: dict[str, Any]) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.name not in out or (field.message_type and field.message_type.GetOptions().map_entry):
            continue
        value = getattr(message, field.name)
        items, outs = (value, out[field.name]) if field.is_repeated else ([value], [out[field.name]])
        if field.cpp_type in _INT64:
            converted = [int(v) for v in items]
            out[field.name] = converted if field.is_repeated else converted[0]
        elif field.message_type is not None and field.message_type.full_name.startswith("distillery"):
            for item, item_out in zip(items, outs, strict=True):
                _numbers(item, item_out)


def print_json(value: Any) -> None:
    if isinstance(value, Message):
        value = as_dict(value)
    click.echo(json.dumps(value, indent=2, default=str))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], whole: Sequence[str] = ()) -> None:
    """A table; the first column and those named in ``whole`` are never wrapped or cut."""
    if not rows:
        console.print(f"[dim]no {title.lower()}[/dim]")
        return
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, no_wrap=i == 0 or column in whole)  # ids and codes stay whole
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console.print(table)


def fail(message: str, code: int = FAILED, hint: str = "") -> NoReturn:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    if hint:
        errors.print(f"[dim]hint:[/dim] {hint}", highlight=False)
    sys.exit(code)


_HINTS = {
    grpc.StatusCode.UNAUTHENTICATED: "set DISTILLERY_API_KEY, or run `distillery up` to create a development key",
    grpc.StatusCode.UNAVAILABLE: "is the stack up? `distillery status` shows each part",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the service did not answer in time; `distillery status` shows each part",
}


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Turn gRPC errors into one clear line and the documented exit code."""
    try:
        yield
    except grpc.RpcError as err:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        exit_code = UNAVAILABLE if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) else FAILED
        fail(f"{code.name.lower()}: {details}", exit_code, _HINTS.get(code, ""))
    except LookupError as err:  # no address for a service
        fail(str(err.args[0] if err.args else err), UNAVAILABLE)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)
