"""distillery tools: import, list and delete the active tools.

``tools import`` sends a JSON or YAML document (OpenAI tools or functions, Anthropic
tools, JSON Schema objects, OpenAPI 3.0/3.1) to ImportTools. A document with any
violation imports nothing: the violations are printed (entry, field, code, message,
hint) and the command exits 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from distillery.cli.output import FAILED, as_dict, console, json_option, print_json, print_table, rpc_errors
from distillery.client import Client
from distillery.ingest.v1 import ingest_pb2


def source_name(source: int) -> str:
    return ingest_pb2.ToolSource.Name(source).removeprefix("TOOL_SOURCE_").lower()


def print_tools(title: str, tools: list[ingest_pb2.Tool]) -> None:
    rows = [(t.id, t.name, source_name(t.source), t.description, json.dumps(as_dict(t.parameters))[:60]) for t in tools]
    print_table(title, ["id", "name", "source", "description", "parameters"], rows, whole=["name"])


@click.group("tools")
def group() -> None:
    """Import and review the tools a tool-calling model learns."""


@group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Replace the active tool list instead of adding to it.")
@json_option
def import_(path: Path, replace: bool, as_json: bool) -> None:
    """Import tools from a JSON or YAML document; same-named active tools are replaced."""
    request = ingest_pb2.ImportToolsRequest(document=path.read_bytes(), filename=path.name, replace=replace)
    with rpc_errors():
        reply = Client.from_environment(timeout=120).ingest.ImportTools(request)
    if as_json:
        print_json(reply)
    else:
        for title, items in (("Violations", reply.violations), ("Warnings", reply.warnings)):
            if items:
                rows = [(v.entry or "-", v.field or "-", v.code, v.message, v.hint) for v in items]
                print_table(title, ["tool", "field", "code", "message", "hint"], rows, whole=["code"])
        if reply.violations:
            console.print(f"[red]nothing imported[/red]: {len(reply.violations)} violation(s) in {path.name}")
        else:
            print_tools("Imported", list(reply.tools))
    if reply.violations:
        raise SystemExit(FAILED)


@group.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List the active tools, by name."""
    with rpc_errors():
        reply = Client.from_environment().ingest.ListTools(ingest_pb2.ListToolsRequest())
    if as_json:
        print_json([as_dict(t) for t in reply.tools])
        return
    print_tools("Tools", list(reply.tools))


@group.command("delete")
@click.argument("tool_id")
def delete(tool_id: str) -> None:
    """Remove one tool from the active list."""
    with rpc_errors():
        Client.from_environment().ingest.DeleteTool(ingest_pb2.DeleteToolRequest(id=tool_id))
    console.print(f"deleted {tool_id}")
