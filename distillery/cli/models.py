"""distillery models: list, show, delete, generate, snippet."""

from __future__ import annotations

import json

import click
from google.protobuf import json_format, struct_pb2

from distillery.cli.metrics_view import print_metrics
from distillery.cli.output import as_dict, console, json_option, print_json, print_table, rpc_errors
from distillery.cli.runs import path_name
from distillery.client import Client
from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2


@click.group("models")
def group() -> None:
    """Your private models."""


@group.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List your models, newest first."""
    with rpc_errors():
        reply = Client.from_environment().registry.ListModels(registry_pb2.ListModelsRequest())
    if as_json:
        print_json([as_dict(m) for m in reply.models])
        return
    rows = [
        (m.id, m.name, m.version, path_name(m.path), m.base_model, m.created_at.ToJsonString()) for m in reply.models
    ]
    print_table("Models", ["id", "name", "version", "path", "base", "created"], rows)


@group.command("show")
@click.argument("model_id")
@json_option
def show(model_id: str, as_json: bool) -> None:
    """Show one model with its metrics."""
    with rpc_errors():
        model = Client.from_environment().registry.GetModel(registry_pb2.GetModelRequest(id=model_id))
    if as_json:
        print_json(model)
        return
    console.print(
        f"[bold]{model.id}[/bold] {model.name} v{model.version} ({path_name(model.path)}) from {model.base_model}"
    )
    print_metrics(model.metrics)


@group.command("delete")
@click.argument("model_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(model_id: str, yes: bool) -> None:
    """Delete a model and its artifacts (frees one slot of your allowance)."""
    if not yes:
        click.confirm(f"delete {model_id} and its artifacts?", abort=True)
    with rpc_errors():
        Client.from_environment().registry.DeleteModel(registry_pb2.DeleteModelRequest(id=model_id))
    console.print(f"deleted {model_id}")


@group.command("generate")
@click.argument("model_id")
@click.argument("prompt")
@click.option("--system", default="", help="A system prompt.")
@click.option("--max-new-tokens", default=128, show_default=True)
@click.option(
    "--tools", "with_tools", is_flag=True, help="Offer your active tools: a tool model answers with tool calls."
)
@json_option
def generate(model_id: str, prompt: str, system: str, max_new_tokens: int, with_tools: bool, as_json: bool) -> None:
    """Ask a model one question (runtime testing)."""
    messages = [registry_pb2.ChatMessage(role="system", content=system)] if system else []
    messages.append(registry_pb2.ChatMessage(role="user", content=prompt))
    with rpc_errors():
        client = Client.from_environment(timeout=600)
        tools = []
        if with_tools:
            for tool in client.ingest.ListTools(ingest_pb2.ListToolsRequest()).tools:
                schema = struct_pb2.Struct()
                schema.update({"name": tool.name, "description": tool.description,
                               "parameters": json_format.MessageToDict(tool.parameters)})  # fmt: skip
                tools.append(schema)
        reply = client.registry.Generate(
            registry_pb2.GenerateRequest(
                model_id=model_id, messages=messages, max_new_tokens=max_new_tokens, tools=tools
            )
        )
    if as_json:
        print_json(reply)
        return
    for call in reply.message.tool_calls:
        click.echo(f"call {call.name} {json.dumps(json_format.MessageToDict(call.arguments))}")
    if reply.message.content:
        click.echo(reply.message.content)


@group.command("snippet")
@click.argument("model_id")
@click.option("--language", type=click.Choice(["grpcurl", "python", "cli"]), default=None)
@json_option
def snippet(model_id: str, language: str | None, as_json: bool) -> None:
    """Print API-ready request snippets for a model."""
    with rpc_errors():
        reply = Client.from_environment().registry.GetSnippet(
            registry_pb2.GetSnippetRequest(model_id=model_id, language=language or "")
        )
    if as_json:
        print_json(dict(reply.snippets))
        return
    for name, code in sorted(reply.snippets.items()):
        console.print(f"[bold]# {name}[/bold]")
        click.echo(code + "\n")
