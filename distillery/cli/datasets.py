"""distillery datasets: upload, validate, list, show."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from distillery.cli.output import FAILED, as_dict, console, json_option, print_json, print_table, rpc_errors
from distillery.client import Client
from distillery.ingest.v1 import ingest_pb2
from distillery.uploads import upload_requests

KINDS = {
    "pairs": ingest_pb2.DATASET_KIND_PAIRS,
    "inputs": ingest_pb2.DATASET_KIND_INPUTS,
    "asr": ingest_pb2.DATASET_KIND_ASR,
    "ocr": ingest_pb2.DATASET_KIND_OCR,
    "tool_calls": ingest_pb2.DATASET_KIND_TOOL_CALLS,
}


def kind_name(kind: int) -> str:
    return ingest_pb2.DatasetKind.Name(kind).removeprefix("DATASET_KIND_").lower()


@click.group("datasets")
def group() -> None:
    """Upload, validate and inspect datasets."""


@group.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(list(KINDS)), required=True, help="What the file holds.")
@click.option("--name", default="", help="A display name (default: the file name).")
@json_option
def upload(path: Path, kind: str, name: str, as_json: bool) -> None:
    """Upload a dataset file; identical content reuses the earlier version."""
    with rpc_errors():
        client = Client.from_environment(timeout=3600)
        if as_json:
            reply = client.ingest.UploadDataset(upload_requests(path, KINDS[kind], name))
        else:
            columns = (*Progress.get_default_columns()[:1], BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with Progress(*columns, console=console, transient=True) as progress:
                task = progress.add_task(f"uploading {path.name}", total=path.stat().st_size)
                requests = upload_requests(path, KINDS[kind], name, lambda n: progress.advance(task, n))
                reply = client.ingest.UploadDataset(requests)
    checked = reply.HasField("report") and reply.report.rows + reply.report.violation_count > 0
    if as_json:
        print_json({**as_dict(reply.dataset), "reused": reply.reused, **(report_json(reply.report) if checked else {})})
    else:
        verb = "reused" if reply.reused else "uploaded"
        console.print(f"{verb} [bold]{reply.dataset.id}[/bold] ({reply.dataset.size_bytes} bytes)")
        if checked:
            print_report(reply.report)
    if checked and not reply.report.valid:
        raise SystemExit(FAILED)


def report_json(report: ingest_pb2.ValidationReport) -> dict[str, object]:
    """The report as the documented JSON: valid, rows, violations (line, field, code, message, hint), ..."""
    out = as_dict(report)
    out["counts"] = {c.code: c.count for c in report.counts}
    return out


def print_report(report: ingest_pb2.ValidationReport) -> None:
    if report.valid:
        console.print(f"[green]valid[/green]: {report.rows} rows")
    else:
        counts = ", ".join(f"{c.code} x{c.count}" for c in report.counts)
        console.print(f"[red]invalid[/red]: {report.rows} rows, {report.violation_count} violations ({counts})")
    for title, items in (("violations", report.violations), ("warnings", report.warnings)):
        if items:
            rows = [(v.line or v.entry or "-", v.field or "-", v.code, v.message, v.hint) for v in items]
            print_table(title.capitalize(), ["line", "field", "code", "message", "hint"], rows, whole=["code"])
    if report.violation_count > len(report.violations):
        console.print(f"(first {len(report.violations)} of {report.violation_count} violations shown)")


@group.command("validate")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(list(KINDS)), required=True, help="What the file holds.")
@json_option
def validate(path: Path, kind: str, as_json: bool) -> None:
    """Check a dataset file without storing it; exits 1 when it is invalid."""
    with rpc_errors():
        report = Client.from_environment(timeout=3600).ingest.ValidateDataset(upload_requests(path, KINDS[kind]))
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
