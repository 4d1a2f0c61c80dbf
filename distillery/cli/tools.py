"""distillery tools: import, describe, list and delete the active tools.

``tools import`` sends a JSON or YAML document (OpenAI tools or functions, Anthropic
tools, JSON Schema objects, OpenAPI 3.0/3.1) to ImportTools. A document with any
violation imports nothing: the violations are printed (entry, field, code, message,
hint) and the command exits 1.

``tools describe "TEXT" --teacher PROVIDER:MODEL`` asks the teacher service to turn a
plain-language description into a canonical tool (DescribeTool); the answer is checked
like an imported tool. With ``--save`` a tool without violations goes through
ImportTools as a one-tool JSON document, and so joins the active list.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from distillery.cli.output import FAILED, as_dict, console, json_option, print_json, print_table, rpc_errors
from distillery.client import Client
from distillery.ingest.v1 import ingest_pb2
from distillery.teacher.v1 import teacher_pb2


def source_name(source: int) -> str:
    return ingest_pb2.ToolSource.Name(source).removeprefix("TOOL_SOURCE_").lower()


def print_violations(items: Any) -> None:
    rows = [(v.entry or "-", v.field or "-", v.code, v.message, v.hint) for v in items]
    print_table("Violations", ["tool", "field", "code", "message", "hint"], rows, whole=["code"])


def tool_dict(tool: ingest_pb2.Tool) -> dict[str, Any]:
    """A tool for --json output, its parameters as JSON (not JSON text)."""
    out = as_dict(tool)
    out["parameters"] = json.loads(out.pop("parameters_json", None) or "{}")
    return out


def print_tools(title: str, tools: list[ingest_pb2.Tool]) -> None:
    rows = [(t.id, t.name, source_name(t.source), t.description, t.parameters_json[:60]) for t in tools]
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
        print_json({**as_dict(reply), "tools": [tool_dict(t) for t in reply.tools]})
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


@group.command("describe")
@click.argument("text")
@click.option("--teacher", required=True, help='The teacher, "provider:model" (e.g. openai:gpt-4.1-mini).')
@click.option("--save", is_flag=True, help="Add the tool to the active list when it has no violations.")
@json_option
def describe(text: str, teacher: str, save: bool, as_json: bool) -> None:
    """Turn TEXT, a tool described in plain language ("-" reads it from stdin), into a typed tool schema.

    Say what the tool does, its arguments with their types and allowed values, and which
    are required. Exits 1 when the teacher's schema has violations.
    """
    if text == "-":
        text = sys.stdin.read()
    client = Client.from_environment(timeout=180)
    with rpc_errors():
        reply = client.teacher.DescribeTool(teacher_pb2.DescribeToolRequest(teacher=teacher, description=text))
    parameters = schema_order(json.loads(reply.parameters_json)) if reply.parameters_json else None
    tool = {"name": reply.name, "description": reply.description, "parameters": parameters}
    saved: ingest_pb2.ImportToolsResponse | None = None
    if save and not reply.violations:
        document = json.dumps(tool, indent=2).encode()
        request = ingest_pb2.ImportToolsRequest(document=document, filename="described-tool.json", plain_language=True)
        with rpc_errors():
            saved = client.ingest.ImportTools(request)
    violations = list(reply.violations) + list(saved.violations if saved else [])
    if as_json:
        out: dict[str, Any] = {**tool, "violations": [as_dict(v) for v in violations], "usage": as_dict(reply.usage)}
        if saved is not None:
            out["saved"] = [tool_dict(t) for t in saved.tools]
        print_json(out)
    else:
        console.print(f"[bold]{reply.name or '(no name)'}[/bold]: {reply.description}", highlight=False)
        click.echo(json.dumps(tool["parameters"], indent=2))
        usage = reply.usage
        console.print(f"[dim]teacher: {usage.input_tokens:,} input and {usage.output_tokens:,} output tokens in "
                      f"{usage.requests} request(s), ${usage.estimated_cost_usd:.4f}"
                      f"{'' if usage.billed else ' (your own key: not billed)'}[/dim]", highlight=False)  # fmt: skip
        if violations:
            print_violations(violations)
            console.print(f"[red]{len(violations)} violation(s)[/red]" + (": nothing saved" if save else ""))
        elif saved is not None:
            print_tools("Saved", list(saved.tools))
    if violations:
        raise SystemExit(FAILED)


# Schema keywords first in this order, then the rest by name.
_KEYWORDS = ["type", "title", "description", "enum", "const", "format", "default", "properties", "items", "required"]


def schema_order(schema: Any) -> Any:
    """A JSON Schema with its keywords in the usual order and its properties required-first, then by name."""
    if isinstance(schema, list):
        return [schema_order(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    rank = {k: i for i, k in enumerate(_KEYWORDS)}
    out = {k: schema[k] for k in sorted(schema, key=lambda k: (rank.get(k, len(rank)), k))}
    for key, sub in out.items():
        if key == "properties" and isinstance(sub, dict):
            required = (
                [r for r in schema.get("required", []) if r in sub] if isinstance(schema.get("required"), list) else []
            )
            names = required + sorted(n for n in sub if n not in required)
            out[key] = {n: schema_order(sub[n]) for n in names}
        elif key not in ("enum", "const", "default", "examples", "required"):
            out[key] = schema_order(sub)
    return out


@group.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List the active tools, by name."""
    with rpc_errors():
        reply = Client.from_environment().ingest.ListTools(ingest_pb2.ListToolsRequest())
    if as_json:
        print_json([tool_dict(t) for t in reply.tools])
        return
    print_tools("Tools", list(reply.tools))


@group.command("delete")
@click.argument("tool_id")
def delete(tool_id: str) -> None:
    """Remove one tool from the active list."""
    with rpc_errors():
        Client.from_environment().ingest.DeleteTool(ingest_pb2.DeleteToolRequest(id=tool_id))
    console.print(f"deleted {tool_id}")
