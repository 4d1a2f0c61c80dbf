"""distillery models: list, show, delete, generate, transcribe, read, snippet."""

from __future__ import annotations

import json
from pathlib import Path

import click
from google.protobuf import json_format

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
        (m.id, m.name, m.version, path_name(m.path), m.base_model, m.state or "ready", m.created_at.ToJsonString())
        for m in reply.models
    ]
    print_table("Models", ["id", "name", "version", "path", "base", "state", "created"], rows, whole=["name", "state"])


@group.command("show")
@click.argument("model_id")
@click.option("--card", is_flag=True, help="Print the whole model card (markdown: an export's README.md).")
@json_option
def show(model_id: str, card: bool, as_json: bool) -> None:
    """Show one model: its card's key facts, metrics, tools and artifacts."""
    with rpc_errors():
        model = Client.from_environment().registry.GetModel(registry_pb2.GetModelRequest(id=model_id))
    if as_json:
        print_json(model)
        return
    if card:
        click.echo(model.card)
        return
    console.print(
        f"[bold]{model.id}[/bold] {model.name} v{model.version} ({path_name(model.path)}) from {model.base_model}"
    )
    for label, value in card_facts(model):
        console.print(f"  {label}: {value}", highlight=False)
    print_metrics(model.metrics)
    if model.tools_json:
        tools = [json.loads(text) for text in model.tools_json]
        rows = [(i + 1, t.get("name", ""), t.get("description", "")) for i, t in enumerate(tools)]
        print_table("Tools it was trained with (`models generate --tools` offers them)", ["#", "name", "description"],
                    rows, whole=["name"])  # fmt: skip
    print_table("Artifacts", ["path", "bytes"], [(a.path, f"{a.size_bytes:,}") for a in model.artifacts])


def card_facts(model: registry_pb2.Model) -> list[tuple[str, str]]:
    """The model card's key facts: state, weights, recipe, data, created."""
    config = json_format.MessageToDict(model.training_config)
    data = config["data"] if isinstance(config.get("data"), dict) else {}
    weights = {registry_pb2.ARTIFACT_KIND_LORA_ADAPTER: "LoRA adapter", registry_pb2.ARTIFACT_KIND_FULL_WEIGHTS:
               "full weights"}.get(model.artifact_kind, "unknown")  # fmt: skip
    facts = [("state", model.state or "ready"), ("weights", weights), ("recipe", config.get("recipe") or "none")]
    datasets = ", ".join(
        f"{k.removesuffix('_id').replace('_', ' ')} {v}" for k, v in data.items() if k.endswith("dataset_id")
    )
    rows = ", ".join(
        f"{int(config[k]):,} {k.removesuffix('_rows')}" for k in ("train_rows", "eval_rows") if k in config
    )
    if datasets or rows:
        facts.append(("data", "; ".join(part for part in (datasets, rows and f"rows: {rows}") if part)))
    facts.append(("created", model.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M UTC")))
    facts.append(("artifacts", model.artifact_uri))
    return facts


@group.command("delete")
@click.argument("model_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Undeploy a deployed model first (else deleting it is refused).")
def delete(model_id: str, yes: bool, force: bool) -> None:
    """Delete a model and its artifacts (frees one slot of your allowance)."""
    if not yes:
        click.confirm(f"delete {model_id} and its artifacts?", abort=True)
    with rpc_errors():
        Client.from_environment().registry.DeleteModel(registry_pb2.DeleteModelRequest(id=model_id, force=force))
    console.print(f"deleted {model_id}")


@group.command("generate")
@click.argument("model_id")
@click.argument("prompt")
@click.option("--system", default="", help="A system prompt.")
@click.option(
    "--max-new-tokens", default=0, help="The most tokens to generate (default: the model's own, as its run used)."
)
@click.option(
    "--tools", "with_tools", is_flag=True,
    help="Offer the tools the model was trained with (in training order): a tool model answers with tool calls.",
)  # fmt: skip
@click.option("--tool", "tool_ids", multiple=True, metavar="ID", help="Offer this tool of yours (repeatable).")
@click.option("--profile", default="", help='The profile to apply (default: the model\'s "default" one; "none": none).')
@json_option
def generate(
    model_id: str, prompt: str, system: str, max_new_tokens: int, with_tools: bool, tool_ids: tuple[str, ...],
    profile: str, as_json: bool,
) -> None:  # fmt: skip
    """Ask a model one question (runtime testing)."""
    messages = [registry_pb2.ChatMessage(role="system", content=system)] if system else []
    messages.append(registry_pb2.ChatMessage(role="user", content=prompt))
    with rpc_errors():
        client = Client.from_environment(timeout=600)
        tools_json = chosen_tools(client, tool_ids) if tool_ids else []
        reply = client.registry.Generate(
            registry_pb2.GenerateRequest(
                model_id=model_id, messages=messages, max_new_tokens=max_new_tokens, model_tools=with_tools,
                tools_json=tools_json, profile=profile,
            )
        )  # fmt: skip
    if as_json:
        print_json(reply)
        return
    for call in reply.message.tool_calls:
        click.echo(f"call {call.name} {call.arguments_json}")
    for invalid in reply.invalid_tool_calls:
        click.echo(f"invalid tool call ({invalid.error}): {invalid.raw}")
    if reply.message.content:
        click.echo(reply.message.content)
    if reply.finish_reason == "length":
        click.echo(f"(cut off at {reply.completion_tokens} tokens: raise --max-new-tokens)", err=True)


# The largest clip Transcribe takes (the registry refuses more, naming `audio`).
MAX_AUDIO_BYTES = 25 * 1024 * 1024


@group.command("transcribe")
@click.argument("model_id")
@click.argument("audio", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--language", default="", help="The spoken language (a code such as en, fr, yue); default: detected.")
@json_option
def transcribe(model_id: str, audio: Path, language: str, as_json: bool) -> None:
    """Transcribe a .wav clip (at most 30 s) with a speech model (runtime testing)."""
    if audio.stat().st_size > MAX_AUDIO_BYTES:
        raise click.UsageError(f"{audio} is over {MAX_AUDIO_BYTES // (1024 * 1024)} MiB: give a clip of at most 30 s")
    with rpc_errors():
        reply = Client.from_environment(timeout=600).registry.Transcribe(
            registry_pb2.TranscribeRequest(model_id=model_id, audio=audio.read_bytes(), language=language)
        )
    if as_json:
        print_json(reply)
        return
    click.echo(reply.text)
    detected = "" if language else f" (detected, probability {reply.language_probability:.2f})"
    click.echo(f"language: {reply.language}{detected}")


# The largest image ReadImage takes (the registry refuses more, naming `image`).
MAX_IMAGE_BYTES = 20 * 1024 * 1024


@group.command("read")
@click.argument("model_id")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--prompt", default="", help="The instruction to read the image under (default: the model's own).")
@json_option
def read(model_id: str, image: Path, prompt: str, as_json: bool) -> None:
    """Read an image (PNG, JPEG, WebP, BMP or TIFF) with an OCR model (runtime testing)."""
    if image.stat().st_size > MAX_IMAGE_BYTES:
        raise click.UsageError(f"{image} is over {MAX_IMAGE_BYTES // (1024 * 1024)} MiB: give a smaller image")
    with rpc_errors():
        reply = Client.from_environment(timeout=600).registry.ReadImage(
            registry_pb2.ReadImageRequest(model_id=model_id, image=image.read_bytes(), prompt=prompt)
        )
    if as_json:
        print_json(reply)
        return
    click.echo(reply.text)
    click.echo(f"prompt: {reply.prompt!r}" + ("" if prompt else " (the model's default)"), err=True)


def chosen_tools(client: Client, tool_ids: tuple[str, ...]) -> list[str]:
    """The tools named by id, from your active list, as canonical JSON text."""
    listed = {t.id: t for t in client.ingest.ListTools(ingest_pb2.ListToolsRequest()).tools}
    unknown = [tool_id for tool_id in tool_ids if tool_id not in listed]
    if unknown:
        raise click.UsageError(f"no tool {', '.join(unknown)} in your tool list (`distillery tools list`)")
    return [
        json.dumps({"name": t.name, "description": t.description, "parameters": json.loads(t.parameters_json)})
        for t in (listed[tool_id] for tool_id in tool_ids)
    ]


# What GetSnippet serves: the OpenAI-compatible endpoint (curl, python, typescript), gRPC (grpcurl) and the CLI.
SNIPPET_LANGUAGES = ("curl", "python", "typescript", "grpcurl", "cli")


@group.command("snippet")
@click.argument("model_id")
@click.option("--lang", "--language", "language", type=click.Choice(SNIPPET_LANGUAGES), default=None,
              help="One snippet, printed alone to run as printed (default: all, each under a heading).")  # fmt: skip
@click.option("--profile", default="", help="The profile the request uses (default: the model's default one).")
@click.option("--inline", is_flag=True, help="Write the profile's settings into the request instead of naming it.")
@click.option("--custom", is_flag=True, help="Placeholders (YOUR_API_KEY, the gateway URL), not $DISTILLERY_API_KEY.")
@json_option
def snippet(model_id: str, language: str | None, profile: str, inline: bool, custom: bool, as_json: bool) -> None:
    """Print API-ready request snippets for a model.

    curl, python and typescript call the OpenAI-compatible endpoint (deploy the model first: `models deploy`);
    each reads the key from $DISTILLERY_API_KEY and never holds it. A text model's request carries its profile
    (`models optimize`): by name, or with --inline as request parameters."""
    with rpc_errors():
        reply = Client.from_environment().registry.GetSnippet(
            registry_pb2.GetSnippetRequest(
                model_id=model_id, language=language or "", profile=profile, inline=inline, custom=custom
            )
        )
    if as_json:
        print_json(dict(reply.snippets))
        return
    if language:
        click.echo(reply.snippets[language])
        return
    for name, code in sorted(reply.snippets.items()):
        console.print(f"[bold]# {name}[/bold]")
        click.echo(code + "\n")
