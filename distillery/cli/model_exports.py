"""distillery models export: download a model's weights (adapter, merged or GGUF) with its model card.

The registry builds the export once (merging an adapter takes a while: the first call waits for it), then
each file streams from ``ReadExportFile`` into ``DIR/<path>.part``, which a later run resumes from its size;
a file whose sha256 matches is renamed into place, and one already there with the same sha256 is skipped.
``--urls`` prints the files' presigned URLs instead, for fetching large exports with any HTTP client.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from distillery.cli.output import console, fail, json_option, print_json, rpc_errors
from distillery.client import Client
from distillery.registry.v1 import registry_pb2
from distillery.uploads import sha256_of

FORMATS = ("adapter", "merged", "gguf")
# Building an export (loading the base model, merging, converting) may take many minutes the first time.
EXPORT_TIMEOUT_S = 3600.0
# One file's stream; an interrupted one resumes where it stopped.
READ_TIMEOUT_S = 6 * 3600.0


@click.command("export")
@click.argument("model_id")
@click.option("--format", "export_format", type=click.Choice(FORMATS), required=True,
              help="adapter: the LoRA adapter as trained; merged: full weights (safetensors) with the adapter "
                   "merged; gguf: llama.cpp's format.")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="The directory to download into (made if missing; a partial download there resumes).")  # fmt: skip
@click.option("--urls", is_flag=True, help="Print each file's presigned URL (and when they expire) instead.")
@json_option
def export(model_id: str, export_format: str, out: Path | None, urls: bool, as_json: bool) -> None:
    """Export a model's weights with its model card (README.md) and download them."""
    if out is None and not urls:
        raise click.UsageError("give --out DIR to download into, or --urls to print the files' URLs")
    with rpc_errors():
        client = Client.from_environment(timeout=EXPORT_TIMEOUT_S)
        if not as_json:
            console.print(f"exporting {model_id} as {export_format} (the first export builds it: may take minutes)")
        built = client.registry.ExportModel(registry_pb2.ExportModelRequest(model_id=model_id, format=export_format))
    if urls:
        if as_json:
            print_json(built)
            return
        expires = built.url_expires_at.ToDatetime().strftime("%Y-%m-%d %H:%M UTC")
        for f in built.files:
            click.echo(f"{f.path}\t{f.size_bytes}\t{f.sha256}\t{f.url}")
        click.echo(f"(the URLs expire at {expires})", err=True)
        return
    assert out is not None
    out.mkdir(parents=True, exist_ok=True)
    for f in built.files:
        download(client, built, f, out)
    if as_json:
        print_json({"out": str(out), "files": [{"path": f.path, "size_bytes": f.size_bytes} for f in built.files]})
    else:
        total = sum(f.size_bytes for f in built.files)
        console.print(f"exported {model_id} ({export_format}): {len(built.files)} files, {total:,} bytes in {out}")


def local_path(out: Path, path: str) -> Path:
    relative = PurePosixPath(path)
    if relative.is_absolute() or not relative.parts or ".." in relative.parts:
        fail(f"the registry listed a file outside the export ({path!r}): not written")
    return out.joinpath(*relative.parts)


def download(client: Client, built: registry_pb2.Export, f: registry_pb2.ExportFile, out: Path) -> None:
    """One file into ``out``: skipped when complete, else streamed into ``<path>.part`` (resumed from its
    size), checked against its sha256 and renamed into place."""
    target = local_path(out, f.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file() and target.stat().st_size == f.size_bytes and sha256_of(target) == f.sha256:
        console.print(f"{f.path}: already complete, skipped")
        return
    part = target.with_name(target.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    if offset > f.size_bytes:
        offset = 0  # not a prefix of this file: start again
    if offset:
        console.print(f"{f.path}: resuming from byte {offset:,} of {f.size_bytes:,}")
    request = registry_pb2.ReadExportFileRequest(
        model_id=built.model_id, format=built.format, path=f.path, offset=offset
    )
    columns = (*Progress.get_default_columns()[:1], BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with rpc_errors(), Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f.path, total=f.size_bytes, completed=offset)
        with part.open("r+b" if offset else "wb") as sink:
            sink.truncate(offset)
            sink.seek(offset)
            for chunk in client.registry.ReadExportFile(request, timeout=READ_TIMEOUT_S):
                if chunk.offset != offset:
                    fail(f"{f.path}: the registry sent bytes from {chunk.offset}, expected {offset}: run again")
                sink.write(chunk.data)
                offset += len(chunk.data)
                progress.update(task, completed=offset)
    if sha256_of(part) != f.sha256:
        part.unlink()
        fail(f"{f.path}: the downloaded bytes do not match its sha256: run the export again to fetch it anew")
    os.replace(part, target)
    console.print(f"{f.path}: {f.size_bytes:,} bytes, sha256 ok")
