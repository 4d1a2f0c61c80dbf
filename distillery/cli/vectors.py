"""distillery vectors: steering vectors (docs/optimization.md), per-layer directions in a base model's hidden
space made from contrastive pairs, attached to a model with a strength (`distillery models optimize`).

A pairs file is JSONL, one pair a line: {"prompt"?: ..., "positive": ..., "negative": ...}. With a prompt the two
texts are answers to it (rendered as the assistant's turn with the model's chat template); without, plain texts.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from distillery.cli.output import as_dict, console, fail, json_option, print_json, print_table, rpc_errors
from distillery.client import Client
from distillery.registry.v1 import registry_pb2

# Computing a vector runs the model over every pair (a 135M model: about 0.1 s a pair on a CPU; more to load it).
CREATE_TIMEOUT_S = 900
MAX_PAIRS = 1000


def read_pairs(path: Path) -> list[registry_pb2.ContrastivePair]:
    """The pairs of a JSONL file; a bad row fails naming its line and field."""
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            fail(f"{path} line {number} is not JSON: {err}", hint='write one {"positive": ..., "negative": ...} a line')
        if not isinstance(row, dict):
            fail(f"{path} line {number} is not an object", hint='write {"prompt"?, "positive", "negative"} a line')
        unknown = sorted(set(row) - {"prompt", "positive", "negative"})
        if unknown:
            fail(f"{path} line {number}: unknown field(s) {', '.join(unknown)}",
                 hint="a row has prompt (optional), positive and negative")  # fmt: skip
        for key in ("positive", "negative", "prompt"):
            value = row.get(key, "")
            if not isinstance(value, str) or (key != "prompt" and not value.strip()):
                fail(f"{path} line {number}: {key} must be a non-empty string",
                     hint="give both texts of each pair (prompt is optional)")  # fmt: skip
        pairs.append(registry_pb2.ContrastivePair(prompt=row.get("prompt", ""), positive=row["positive"],
                                                  negative=row["negative"]))  # fmt: skip
    if not 2 <= len(pairs) <= MAX_PAIRS:
        fail(f"{path} has {len(pairs)} pair(s): give 2 to {MAX_PAIRS}")
    return pairs


def parse_layers(text: str) -> list[int]:
    """ "4-8" (inclusive) or "4,5,6" (or a mix: "2,4-6") as a list of layer numbers."""
    layers: list[int] = []
    try:
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            layers.extend(range(int(first), int(last) + 1) if dash else [int(first)])
    except ValueError:
        raise click.BadParameter(f"{text!r}: give layers as 4-8 or 4,5,6 (0-based decoder layers)") from None
    if not layers or min(layers) < 0:
        raise click.BadParameter(f"{text!r}: give layers as 4-8 or 4,5,6 (0-based decoder layers)")
    return sorted(set(layers))


def describe(v: registry_pb2.Vector) -> str:
    layers = f"{v.layers[0]}-{v.layers[-1]}" if v.layers == list(range(v.layers[0], v.layers[-1] + 1)) else (
        ",".join(str(n) for n in v.layers))  # fmt: skip
    built_in = ", built-in" if v.built_in else ""
    strength = f", suggested strength {v.suggested_strength:g}" if v.suggested_strength else ""
    return (f"{v.id} {v.name}: {v.method}{built_in}, layers {layers} of {v.layer_count}, hidden size {v.hidden_size}, "
            f"{v.pair_count} pairs, base {v.base_model}{strength}")  # fmt: skip


@click.group("vectors")
def group() -> None:
    """Steering vectors: make them from contrastive pairs, import/export them, attach them with
    `distillery models optimize MODEL --vector NAME=STRENGTH`."""


@group.command("create")
@click.argument("name")
@click.option(
    "--model", "model_id", required=True, help="A model of yours: the vector lives in its base model's space."
)
@click.option("--pairs", "pairs_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='JSONL: {"prompt"?, "positive", "negative"} a line.')  # fmt: skip
@click.option("--layers", default="", callback=lambda ctx, param, value: parse_layers(value) if value else [],
              help="Decoder layers (0-based): 4-8 or 4,5,6. Default: the middle third.")  # fmt: skip
@click.option("--method", type=click.Choice(["mean_diff", "pca"]), default="mean_diff", show_default=True,
              help="Mean activation difference, or the first principal component of the differences.")  # fmt: skip
@click.option("--description", default="", help="What the vector does.")
@json_option
def create(name: str, model_id: str, pairs_file: Path, layers: list[int], method: str, description: str,
           as_json: bool) -> None:  # fmt: skip
    """Compute a steering vector NAME from contrastive pairs."""
    request = registry_pb2.CreateVectorRequest(
        name=name, model_id=model_id, pairs=read_pairs(pairs_file), layers=layers,
        method=method, description=description,
    )  # fmt: skip
    with rpc_errors():
        found = Client.from_environment(timeout=CREATE_TIMEOUT_S).registry.CreateVector(request)
    if as_json:
        print_json(found)
    else:
        console.print(describe(found), highlight=False)


@group.command("import")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "model_id", required=True, help="A model of yours whose base model the vector was made for.")
@click.option("--format", "file_format", type=click.Choice(["safetensors", "gguf"]), default=None,
              help="Default: told by the file's first bytes.")  # fmt: skip
@click.option("--description", default="", help="What the vector does.")
@json_option
def import_(name: str, file: Path, model_id: str, file_format: str | None, description: str, as_json: bool) -> None:
    """Import a vector FILE (safetensors as `vectors export` writes it, or a llama.cpp control-vector GGUF)."""
    request = registry_pb2.ImportVectorRequest(
        name=name, model_id=model_id, format=file_format or "", data=file.read_bytes(), description=description
    )
    with rpc_errors():
        found = Client.from_environment(timeout=CREATE_TIMEOUT_S).registry.ImportVector(request)
    if as_json:
        print_json(found)
    else:
        console.print(describe(found), highlight=False)


@group.command("list")
@click.option("--model", "model_id", default="",
              help="Only the vectors that fit this model (its built-in library is made on first use).")  # fmt: skip
@json_option
def list_(model_id: str, as_json: bool) -> None:
    """List your steering vectors."""
    with rpc_errors():
        reply = Client.from_environment(timeout=CREATE_TIMEOUT_S).registry.ListVectors(
            registry_pb2.ListVectorsRequest(model_id=model_id)
        )
    if as_json:
        print_json([as_dict(v) for v in reply.vectors])
        return
    rows = [
        (v.id, v.name, "yes" if v.built_in else "", v.method, len(v.layers), v.pair_count,
         f"{v.suggested_strength:g}" if v.suggested_strength else "")
        for v in reply.vectors
    ]  # fmt: skip
    print_table("Steering vectors", ["id", "name", "built-in", "method", "layers", "pairs", "strength"], rows,
                whole=["id", "name"])  # fmt: skip


@group.command("show")
@click.argument("vector")
@click.option("--model", "model_id", default="", help="With a vector's name: the model whose base model it is for.")
@json_option
def show(vector: str, model_id: str, as_json: bool) -> None:
    """Show a vector (by id, or by name)."""
    with rpc_errors():
        found = Client.from_environment().registry.GetVector(
            registry_pb2.GetVectorRequest(vector_id=vector, model_id=model_id)
        )
    if as_json:
        print_json(found)
        return
    console.print(describe(found), highlight=False)
    if found.description:
        console.print(found.description, highlight=False)


@group.command("delete")
@click.argument("vector")
@click.option("--model", "model_id", default="", help="With a vector's name: the model whose base model it is for.")
def delete(vector: str, model_id: str) -> None:
    """Delete a vector (refused while a profile attaches it)."""
    with rpc_errors():
        Client.from_environment().registry.DeleteVector(
            registry_pb2.DeleteVectorRequest(vector_id=vector, model_id=model_id)
        )
    console.print(f"deleted {vector}", highlight=False)


@group.command("export")
@click.argument("vector")
@click.option("--model", "model_id", default="", help="With a vector's name: the model whose base model it is for.")
@click.option("--format", "file_format", type=click.Choice(["safetensors", "gguf"]), default="safetensors",
              show_default=True, help="gguf: llama.cpp's control vector (--control-vector FILE).")  # fmt: skip
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write it (default: <name>.<format> here).")  # fmt: skip
def export(vector: str, model_id: str, file_format: str, out: Path | None) -> None:
    """Write a vector to a file."""
    with rpc_errors():
        reply = Client.from_environment().registry.ExportVector(
            registry_pb2.ExportVectorRequest(vector_id=vector, model_id=model_id, format=file_format)
        )
    target = out or Path(reply.filename)
    target.write_bytes(reply.data)
    console.print(f"wrote {target} ({len(reply.data)} bytes)", highlight=False)
