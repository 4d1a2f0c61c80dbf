"""distillery runs: list, show, watch, cancel, logs."""

from __future__ import annotations

import click

from distillery.cli.output import FAILED, as_dict, console, json_option, print_json, print_table, rpc_errors
from distillery.client import Client
from distillery.trainer.v1 import trainer_pb2 as pb

FINAL = {pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED}


def state_name(state: int) -> str:
    return pb.RunState.Name(state).removeprefix("RUN_STATE_")


def path_name(path: int) -> str:
    from distillery.common.v1 import common_pb2

    return common_pb2.TrainingPath.Name(path).removeprefix("TRAINING_PATH_").lower().replace("_", "-")


@click.group("runs")
def group() -> None:
    """Training runs."""


@group.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List your runs, newest first."""
    with rpc_errors():
        reply = Client.from_environment().trainer.ListRuns(pb.ListRunsRequest())
    if as_json:
        print_json([as_dict(r) for r in reply.runs])
        return
    rows = [
        (r.id, path_name(r.path), state_name(r.state), r.student_model, r.created_at.ToJsonString()) for r in reply.runs
    ]
    print_table("Runs", ["id", "path", "state", "student", "created"], rows)


@group.command("show")
@click.argument("run_id")
@json_option
def show(run_id: str, as_json: bool) -> None:
    """Show one run: state, progress, metrics, error."""
    with rpc_errors():
        run = Client.from_environment().trainer.GetRun(pb.GetRunRequest(id=run_id))
    if as_json:
        print_json(run)
        return
    console.print(f"[bold]{run.id}[/bold] {path_name(run.path)} [bold]{state_name(run.state)}[/bold]")
    if run.progress.total_steps:
        console.print(f"step {run.progress.step}/{run.progress.total_steps}")
    for key, value in sorted(run.metrics.items()):
        console.print(f"  {key}: {value:.4g}")
    if run.HasField("error"):
        console.print(f"[red]{run.error.code}[/red]: {run.error.message}")


@group.command("watch")
@click.argument("run_id")
def watch(run_id: str) -> None:
    """Follow a run's events until it ends; exits 1 if it ends FAILED or CANCELLED."""
    last_state = pb.RUN_STATE_UNSPECIFIED
    with rpc_errors():
        client = Client.from_environment(timeout=7 * 24 * 3600)
        for event in client.trainer.WatchRun(pb.WatchRunRequest(id=run_id)):
            kind = event.WhichOneof("payload")
            stamp = event.at.ToDatetime().strftime("%H:%M:%S")
            if kind == "state_change":
                last_state = event.state_change.to_state
                console.print(f"{stamp} state [bold]{state_name(last_state)}[/bold]")
                if event.state_change.HasField("error"):
                    console.print(f"  [red]{event.state_change.error.code}[/red]: {event.state_change.error.message}")
            elif kind == "progress":
                p = event.progress
                console.print(f"{stamp} step {p.step}/{p.total_steps} eta {p.eta_seconds:.0f}s")
            elif kind == "metrics":
                values = " ".join(f"{k}={v:.4g}" for k, v in sorted(event.metrics.values.items()))
                console.print(f"{stamp} {values}")
            elif kind == "log":
                console.print(f"{stamp} {event.log.text}", highlight=False)
    if last_state in FINAL and last_state != pb.RUN_STATE_SUCCEEDED:
        raise SystemExit(FAILED)


@group.command("cancel")
@click.argument("run_id")
def cancel(run_id: str) -> None:
    """Cancel a run that has not ended."""
    with rpc_errors():
        run = Client.from_environment().trainer.CancelRun(pb.CancelRunRequest(id=run_id))
    console.print(f"{run.id} is {state_name(run.state)}")


@group.command("logs")
@click.argument("run_id")
@click.option("--tail", default=200, show_default=True, help="How many of the last lines.")
@json_option
def logs(run_id: str, tail: int, as_json: bool) -> None:
    """Print the run's training log."""
    with rpc_errors():
        reply = Client.from_environment().trainer.GetRunLogs(pb.GetRunLogsRequest(id=run_id, tail=tail))
    if as_json:
        print_json(list(reply.lines))
        return
    for line in reply.lines:
        click.echo(line)
