"""Following a run live: state changes and log lines as they happen, a progress bar with
step/total, ETA, loss and tokens/s on a terminal, plain throttled lines elsewhere.

The stream is resumed from the last event seen when the connection drops (the trainer
service restarting, say), so a watch lasts as long as the run.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from distillery.cli.output import console
from distillery.trainer.v1 import trainer_pb2 as pb

FINAL = {pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED}
RECONNECT_FOR_S = 120.0
PLAIN_PROGRESS_EVERY_S = 5.0
SHOWN_METRICS = ("loss", "eval_loss", "tokens_per_second", "learning_rate")


def state_name(state: int) -> str:
    return pb.RunState.Name(state).removeprefix("RUN_STATE_")


def metrics_text(values: Any) -> str:
    shown = [(k, values[k]) for k in SHOWN_METRICS if k in values] or sorted(values.items())
    return " ".join(f"{k}={v:.4g}" for k, v in shown)


def generation_text(p: pb.Progress) -> str:
    """The teacher's progress: rows done/total, failed rows, tokens and cost so far."""
    usage = p.usage
    failed = f", {p.rows_failed} failed" if p.rows_failed else ""
    billed = "" if usage.billed or not usage.requests else " (own key)"
    return (f"rows {p.rows_done}/{p.rows_total}{failed}, tokens {usage.input_tokens:,} in / "
            f"{usage.output_tokens:,} out, ${usage.estimated_cost_usd:.4f}{billed}")  # fmt: skip


class _Screen:
    """Where events go: a live bar on a terminal, lines otherwise."""

    def __init__(self) -> None:
        self.live = console.is_terminal
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"), console=console, transient=False,
        )  # fmt: skip
        self.task = self.bar.add_task("QUEUED", total=None, metrics="", unit="steps", visible=False)
        self.last_plain = 0.0
        self.metrics = ""

    def __enter__(self) -> _Screen:
        if self.live:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.bar.stop()

    def line(self, text: str) -> None:
        (self.bar.console if self.live else console).print(text, highlight=False, soft_wrap=True)

    def state(self, state: int) -> None:
        self.bar.update(self.task, description=state_name(state))

    def progress(self, p: pb.Progress) -> None:
        generating = bool(p.rows_total and not p.total_steps)
        done, total = (p.rows_done, p.rows_total) if generating else (p.step, p.total_steps)
        text = (
            generation_text(p)
            if generating
            else (f"step {p.step}/{p.total_steps} epoch {p.epoch:.2f} eta {p.eta_seconds:.0f}s")
        )
        if self.live:
            self.bar.update(
                self.task,
                completed=done,
                total=total or None,
                visible=True,
                unit="rows" if generating else "steps",
                metrics=text if generating else self.metrics,
            )
        elif time.monotonic() - self.last_plain >= PLAIN_PROGRESS_EVERY_S or done == total:
            self.last_plain = time.monotonic()
            self.line(f"  {text} {'' if generating else self.metrics}")

    def metrics_event(self, m: pb.Metrics) -> None:
        self.metrics = metrics_text(m.values)
        if self.live:
            self.bar.update(self.task, metrics=self.metrics)


def follow(trainer: Any, run_id: str) -> int:
    """Print the run's events until it is final or paused; returns that state."""
    after, last_state = 0, int(pb.RUN_STATE_UNSPECIFIED)
    lost_since: float | None = None
    with _Screen() as screen:
        while last_state not in FINAL and last_state != pb.RUN_STATE_PAUSED:
            try:
                for event in trainer.WatchRun(pb.WatchRunRequest(id=run_id, after_sequence=after)):
                    lost_since = None
                    after = event.sequence
                    last_state = _show(screen, event, last_state)
                    if last_state == pb.RUN_STATE_PAUSED:
                        break
                if last_state not in FINAL and last_state != pb.RUN_STATE_PAUSED:  # the stream ended early
                    last_state = int(trainer.GetRun(pb.GetRunRequest(id=run_id)).state)
            except grpc.RpcError as err:
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > RECONNECT_FOR_S:
                    raise
                screen.line("  [yellow]lost the trainer service; reconnecting...[/yellow]")
                time.sleep(2)
    return last_state


def _show(screen: _Screen, event: pb.RunEvent, last_state: int) -> int:
    kind = event.WhichOneof("payload")
    stamp = event.at.ToDatetime().strftime("%H:%M:%S")
    if kind == "state_change":
        change = event.state_change
        screen.state(change.to_state)
        screen.line(f"{stamp} [bold]{state_name(change.to_state)}[/bold]")
        if change.HasField("error"):
            field = f" (field {change.error.field})" if change.error.field else ""
            screen.line(f"  [red]{change.error.code}[/red]{field}: {change.error.message}")
            for v in change.error.violations:
                screen.line(f"    line {v.line} {v.field or '-'} {v.code}: {v.message} hint: {v.hint}")
        return change.to_state
    if kind == "progress":
        screen.progress(event.progress)
    elif kind == "metrics":
        screen.metrics_event(event.metrics)
        values = event.metrics.values
        if "eval_loss_after" in values:
            screen.line(f"{stamp} eval loss {values.get('eval_loss_before', float('nan')):.4f} before training, "
                        f"{values['eval_loss_after']:.4f} after")  # fmt: skip
    elif kind == "log":
        screen.line(f"{stamp} {event.log.text}")
    return last_state
