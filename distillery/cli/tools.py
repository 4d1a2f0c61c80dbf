"""distillery tools: the active tool list."""

from __future__ import annotations

import json

import click

from distillery.cli.output import as_dict, json_option, print_json, print_table, rpc_errors
from distillery.client import Client
from distillery.ingest.v1 import ingest_pb2


@click.group("tools")
def group() -> None:
    """Import and review the tools a tool-calling model learns."""


@group.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List the active tools."""
    with rpc_errors():
        reply = Client.from_environment().ingest.ListTools(ingest_pb2.ListToolsRequest())
    if as_json:
        print_json([as_dict(t) for t in reply.tools])
        return
    rows = [(t.name, t.description, json.dumps(as_dict(t.parameters))[:60]) for t in reply.tools]
    print_table("Tools", ["name", "description", "parameters"], rows)
