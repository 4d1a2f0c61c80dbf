"""distillery datasets: upload, validate, list, show, from-traffic."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from distillery.cli.output import FAILED, as_dict, console, json_option, print_json, print_table, rpc_errors
from distillery.cli.traffic import parse_since, parse_tags, since_option, since_stamp, tag_option
from distillery.client import Client
from distillery.ingest.v1 import ingest_pb2
from distillery.uploads import BUNDLE_KINDS, Upload, bundle, send, send_presigned
from distillery.uploads import validate as validate_upload

KINDS = {
    "pairs": ingest_pb2.DATASET_KIND_PAIRS,
    "inputs": ingest_pb2.DATASET_KIND_INPUTS,
    "asr": ingest_pb2.DATASET_KIND_ASR,
    "ocr": ingest_pb2.DATASET_KIND_OCR,
    "tool-calls": ingest_pb2.DATASET_KIND_TOOL_CALLS,
}


def kind_name(kind: int) -> str:
    return ingest_pb2.DatasetKind.Name(kind).removeprefix("DATASET_KIND_").lower().replace("_", "-")


@click.group("datasets")
def group() -> None:
    """Upload, validate and inspect datasets."""


def _upload(path: Path, kind: str, manifest: Path | None, name: str, options: dict[str, Any]) -> Upload:
    """What ``path`` means for the kind: the JSONL (or CSV) file; or for asr an audio file or a folder of
    them, for ocr the image ZIP, each with its manifest (found in the folder when not named)."""
    if KINDS[kind] in BUNDLE_KINDS:
        try:
            files, manifest = bundle(KINDS[kind], path, manifest)
        except ValueError as err:
            raise click.UsageError(str(err)) from None
    else:
        if path.is_dir() or manifest is not None:
            what = "one JSONL file" if kind == "tool-calls" else "one JSONL or CSV file"
            raise click.UsageError(f"a {kind} dataset is {what} (--manifest is for asr and ocr)")
        files = [path]
    return Upload(files, KINDS[kind], manifest=manifest, display_name=name, **options)


def upload_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options every upload and validation takes."""
    for option in reversed(
        [
            click.argument("path", type=click.Path(exists=True, path_type=Path)),
            click.option("--kind", type=click.Choice(list(KINDS)), required=True, help="What the file holds."),
            click.option(
                "--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                help="asr/ocr: the manifest JSONL (default: the one .jsonl in the PATH folder).",
            ),
            click.option("--language", default="", help="asr: an ISO 639-1 code for every row (wins over detection)."),
            click.option("--max-clip-seconds", type=float, default=0.0, help="asr: longest clip (default 30)."),
            click.option("--context-tokens", type=int, default=0, help="pairs/inputs: warn above (default 2048)."),
        ]
    ):  # fmt: skip
        command = option(command)
    return command


@group.command("upload")
@upload_options
@click.option("--name", default="", help="A display name (default: the file name).")
@click.option("--presigned", is_flag=True, help="Send the files through presigned S3 URLs (for very large files).")
@json_option
def upload(
    path: Path, kind: str, manifest: Path | None, language: str, max_clip_seconds: float, context_tokens: int,
    name: str, presigned: bool, as_json: bool,
) -> None:  # fmt: skip
    """Upload a dataset; identical content reuses the earlier version.

    \b
    pairs, inputs: PATH is a .jsonl or .csv file
    tool-calls: PATH is a .jsonl file (OpenAI fine-tuning format with tools)
    asr: PATH is a folder of .wav files (or one .wav) plus --manifest
    ocr: PATH is the image ZIP plus --manifest
    """
    options = {"language": language, "max_clip_seconds": max_clip_seconds, "context_tokens": context_tokens}
    what = _upload(path, kind, manifest, name, options)
    # An empty upload has nothing to PUT: the stream answers it with its empty_file report.
    send_with = send_presigned if presigned and what.total else send
    with rpc_errors():
        client = Client.from_environment(timeout=3600)
        if as_json:
            reply = send_with(client.ingest, what)
        else:
            columns = (*Progress.get_default_columns()[:1], BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with Progress(*columns, console=console, transient=True) as progress:
                task = progress.add_task(f"uploading {path.name}", total=what.total)
                reply = send_with(client.ingest, what, on_progress=lambda n: progress.update(task, completed=n))
    checked = reply.HasField("report") and reply.report.rows + reply.report.violation_count > 0
    stored = reply.HasField("dataset")  # not stored: an empty upload, answered with its report only
    if as_json:
        dataset = as_dict(reply.dataset) if stored else {}
        print_json(
            {**dataset, "stored": stored, "reused": reply.reused, **(report_json(reply.report) if checked else {})}
        )
    else:
        if stored:
            verb = "reused" if reply.reused else "uploaded"
            console.print(f"{verb} [bold]{reply.dataset.id}[/bold] ({reply.dataset.size_bytes} bytes)")
        else:
            console.print("[red]nothing stored[/red]")
        if checked:
            print_report(reply.report)
    if (checked and not reply.report.valid) or not stored:
        raise SystemExit(FAILED)


def report_json(report: ingest_pb2.ValidationReport) -> dict[str, object]:
    """The report as the documented JSON: valid, rows, violations (line, field, code, message, hint,
    entry), warnings, counts and warning_counts ({code: n})."""
    out = as_dict(report)
    out["counts"] = {c.code: c.count for c in report.counts}
    out["warning_counts"] = {c.code: c.count for c in report.warning_counts}
    return out


def print_report(report: ingest_pb2.ValidationReport) -> None:
    if report.valid:
        console.print(f"[green]valid[/green]: {report.rows} rows")
    else:
        counts = ", ".join(f"{c.code} x{c.count}" for c in report.counts)
        console.print(f"[red]invalid[/red]: {report.rows} rows, {report.violation_count} violations ({counts})")
    if report.warning_count:
        counts = ", ".join(f"{c.code} x{c.count}" for c in report.warning_counts)
        console.print(f"[yellow]{report.warning_count} warnings[/yellow] (do not block training: {counts})")
    for title, items in (("violations", report.violations), ("warnings", report.warnings)):
        if items:
            rows = [(v.line or v.entry or "-", v.field or "-", v.code, v.message, v.hint) for v in items]
            print_table(title.capitalize(), ["line/entry", "field", "code", "message", "hint"], rows, whole=["code"])
    if report.violation_count > len(report.violations):
        console.print(f"(first {len(report.violations)} of {report.violation_count} violations shown)")


@group.command("validate")
@upload_options
@json_option
def validate(
    path: Path, kind: str, manifest: Path | None, language: str, max_clip_seconds: float, context_tokens: int,
    as_json: bool,
) -> None:  # fmt: skip
    """Check a dataset without storing it; exits 1 when it is invalid (PATH as for upload)."""
    options = {"language": language, "max_clip_seconds": max_clip_seconds, "context_tokens": context_tokens}
    what = _upload(path, kind, manifest, "", options)
    with rpc_errors():
        report = validate_upload(Client.from_environment(timeout=3600).ingest, what)
    if as_json:
        print_json(report_json(report))
    else:
        print_report(report)
    if not report.valid:
        raise SystemExit(FAILED)


@group.command("list")
@click.option("--kind", type=click.Choice(list(KINDS)), default=None)
@json_option
def list_(kind: str | None, as_json: bool) -> None:
    """List your datasets, newest first."""
    with rpc_errors():
        reply = Client.from_environment().ingest.ListDatasets(
            ingest_pb2.ListDatasetsRequest(kind=KINDS.get(kind or "", 0))
        )
    if as_json:
        print_json([as_dict(d) for d in reply.datasets])
        return
    rows = [
        (d.id, d.display_name, kind_name(d.kind), d.size_bytes, d.created_at.ToJsonString()) for d in reply.datasets
    ]
    print_table("Datasets", ["id", "name", "kind", "bytes", "created"], rows)


@group.command("show")
@click.argument("dataset_id")
@json_option
def show(dataset_id: str, as_json: bool) -> None:
    """Show one dataset."""
    with rpc_errors():
        dataset = Client.from_environment().ingest.GetDataset(ingest_pb2.GetDatasetRequest(id=dataset_id))
    if as_json:
        print_json(dataset)
        return
    for key, value in as_dict(dataset).items():
        if key != "report":
            console.print(f"[bold]{key}[/bold]: {value}", highlight=False)


@group.command("from-traffic")
@tag_option(required=True)
@click.option(
    "--kind",
    type=click.Choice(["pairs", "tool-calls"]),
    default="pairs",
    show_default=True,
    help="pairs: the conversation and the text answer; tool-calls: with the tools and the answer's calls.",
)
@since_option
@click.option(
    "--limit", type=click.IntRange(min=0), default=0, help="At most this many records, newest first (default 10,000)."
)
@click.option("--name", default="", help="A display name (default: traffic and the tags).")
@click.option(
    "--system-prompt",
    default="",
    help="pairs: the instruction of requests sent with no system message (a pairs row needs one).",
)
@json_option
def from_traffic(
    tags: tuple[str, ...], kind: str, since: str, limit: int, name: str, system_prompt: str, as_json: bool
) -> None:
    """Build a dataset version from captured traffic, validated like an upload.

    Rows already in one of your eval sets (the eval side of a split) are left out, and
    records that do not fit the kind (a tool call in a pairs dataset) too; both are counted.
    Near-duplicates are reported as warnings.
    """
    request = ingest_pb2.CreateDatasetFromTrafficRequest(
        metadata=parse_tags(tags), kind=KINDS[kind], since=since_stamp(parse_since(since)), limit=limit,
        display_name=name, system_prompt=system_prompt,
    )  # fmt: skip
    with rpc_errors():
        made = Client.from_environment(timeout=3600).ingest.CreateDatasetFromTraffic(request)
    reply = made.upload
    counts = {"records": made.records, "left_out_eval": made.left_out_eval, "left_out_kind": made.left_out_kind}
    if as_json:
        print_json({**as_dict(reply.dataset), "reused": reply.reused, **counts, **report_json(reply.report)})
    else:
        verb = "reused" if reply.reused else "created"
        console.print(f"{verb} [bold]{reply.dataset.id}[/bold] from {made.records} captured records: "
                      f"{reply.report.rows} rows, {made.left_out_eval} left out as already in an eval set, "
                      f"{made.left_out_kind} not fitting {kind}", highlight=False)  # fmt: skip
        print_report(reply.report)
    if not reply.report.valid:
        raise SystemExit(FAILED)
