"""`distillery runs plot`: a run's training loss, evals and learning rate against steps, as a PNG;
and the text sparkline of its eval metric that `runs show` prints.

The data is what the trainer keeps: ``GetRun`` (its evals, best step and why it stopped) and the
run's event history from ``WatchRun`` (the training job's metrics: loss, learning rate, eval_*).
Evals come from ``Run.evals`` when the run has them, else from metric events carrying eval_* keys.
matplotlib (the ``plot`` extra) is imported only when a plot is drawn, with the Agg canvas: no display.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import grpc
from rich.markup import escape

from distillery.cli.output import console, fail, rpc_errors
from distillery.cli.run_watch import FINAL, state_name
from distillery.client import Client
from distillery.common.v1 import common_pb2
from distillery.trainer.v1 import trainer_pb2 as pb

Curve = list[tuple[int, float]]  # (step, value), by step
BLOCKS = "▁▂▃▄▅▆▇█"
# Keys that measure no model: an eval's time, throughput and counts, and the run's closing summary
# (eval_loss_before/after, eval_rows), which is no eval at a step.
NOT_EVALS = ("_runtime", "_per_second", "_time", "_num_tokens", "_entropy", "_before", "_after", "_rows", "_too_long")
# Green and red mark the best checkpoint and an early stop, purple is the learning rate.
EVAL_COLOURS = ["tab:orange", "tab:cyan", "tab:brown", "tab:pink", "tab:olive", "tab:gray", "gold", "navy"]
WATCH_LIVE_S = 3.0  # how long to read a run still going (its history comes at once, then it waits)


@dataclass
class RunSeries:
    """What a plot of one run draws."""

    title: str
    loss: Curve = field(default_factory=list)
    learning_rate: Curve = field(default_factory=list)
    evals: dict[str, Curve] = field(default_factory=dict)
    evals_from: str = ""  # "the run's evals", "metric events", or "" when none
    best_step: int = 0
    early_stop_step: int = 0
    stop: str = ""  # e.g. "max_steps at step 24"

    def empty(self) -> bool:
        return not (self.loss or self.learning_rate or self.evals)


def _curve(points: dict[int, float]) -> Curve:
    return sorted(points.items())


def run_series(run: pb.Run, events: Iterable[pb.RunEvent]) -> RunSeries:
    """The run's curves: training loss and learning rate from its metric events, its evals (a value per
    eval step, the last one reported at a step kept), and where it kept its best checkpoint and stopped."""
    loss: dict[int, float] = {}
    rate: dict[int, float] = {}
    logged: dict[str, dict[int, float]] = {}
    for event in events:
        if event.WhichOneof("payload") != "metrics":
            continue
        step, values = int(event.metrics.step), event.metrics.values
        if "loss" in values:
            loss[step] = values["loss"]
        if "learning_rate" in values:
            rate[step] = values["learning_rate"]
        for key, value in values.items():
            if key.startswith("eval_") and not key.endswith(NOT_EVALS):
                logged.setdefault(key, {})[step] = value
    evals: dict[str, dict[int, float]] = {}
    for evaluation in run.evals:
        for key, value in evaluation.values.items():
            if not key.endswith(NOT_EVALS):
                evals.setdefault(key, {})[int(evaluation.step)] = value
    source = "the run's evals" if evals else "metric events" if logged else ""
    path = common_pb2.TrainingPath.Name(run.path).removeprefix("TRAINING_PATH_").lower().replace("_", "-")
    return RunSeries(
        title=f"{run.id} · {path} · {state_name(run.state)}",
        loss=_curve(loss),
        learning_rate=_curve(rate),
        evals={key: _curve(points) for key, points in sorted((evals or logged).items(), key=_losses_first)},
        evals_from=source,
        best_step=int(run.best_step),
        early_stop_step=int(run.stop_step) if run.stop_reason == "early_stop" else 0,
        stop=f"{run.stop_reason} at step {run.stop_step}" if run.stop_reason else "",
    )


def _losses_first(item: tuple[str, Any]) -> tuple[bool, str]:
    return "loss" not in item[0], item[0]


def figure(series: RunSeries) -> Any:
    """A matplotlib Figure (Agg canvas): loss and evals above, the learning rate below, the best checkpoint
    and an early stop as labelled vertical lines across both."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 2 if series.learning_rate else 1
    fig = Figure(figsize=(10, 6.5 if panels == 2 else 5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False, height_ratios=[3, 1.2][:panels])[:, 0]
    top = axes[0]
    handles: list[Any] = []
    if series.loss:
        handles += top.plot(*zip(*series.loss, strict=True), color="tab:blue", lw=1.6, label="training loss")
    losses = bool(series.loss) or any("loss" in key for key in series.evals)
    scores = top.twinx() if losses and any("loss" not in key for key in series.evals) else top  # a score's own axis
    markers, colours = iter("osD^vP*X" * 4), iter(EVAL_COLOURS * 4)
    for key, curve in series.evals.items():
        ax = top if "loss" in key else scores
        handles += ax.plot(*zip(*curve, strict=True), ls="--", lw=1.2, marker=next(markers), ms=6,
                           color=next(colours), label=key if key.startswith("eval_") else f"{key} (eval)")  # fmt: skip
        if (best := dict(curve).get(series.best_step)) is not None and key == next(iter(series.evals)):
            ax.plot([series.best_step], [best], marker="o", ms=13, mfc="none", mec="tab:green", mew=2)
    top.set_ylabel("loss" if losses else "eval score")
    scores.set_ylabel("eval score")
    top.grid(alpha=0.3)
    if series.learning_rate:
        bottom = axes[1]
        bottom.plot(*zip(*series.learning_rate, strict=True), color="tab:purple", lw=1.4)
        bottom.set_ylabel("learning rate")
        bottom.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        bottom.grid(alpha=0.3)
    for step, colour, style, label in (
        (series.best_step, "tab:green", "-.", f"best checkpoint (step {series.best_step})"),
        (series.early_stop_step, "tab:red", ":", f"early stop (step {series.early_stop_step})"),
    ):
        if step:
            for ax in axes:
                line = ax.axvline(step, color=colour, ls=style, lw=1.8, label=label)
            handles.append(line)
    axes[-1].set_xlabel("step")
    fig.suptitle(series.title, fontsize=13, fontweight="bold")
    notes = [f"evals from {series.evals_from}" if series.evals_from else "no evals yet"]
    notes += [f"stopped: {series.stop}"] if series.stop else []
    top.set_title(", ".join(notes), fontsize=9, color="dimgray")
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False)
    return fig


def draw(series: RunSeries, out: Path) -> None:
    figure(series).savefig(out, format="png")


def sparkline(values: Sequence[float], width: int = 24) -> str:
    """``width`` characters of ▁..█ scaled between the finite values' min and max; a constant series is
    flat (▄), a NaN a gap, and no values all gaps. Longer series are averaged into buckets, shorter ones
    stretched."""
    n = len(values)
    cells: list[float] = []
    for i in range(width):
        lo = i * n // width
        bucket = [v for v in values[lo : max((i + 1) * n // width, lo + 1)] if math.isfinite(v)]
        cells.append(sum(bucket) / len(bucket) if bucket else math.nan)
    finite = [c for c in cells if math.isfinite(c)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
    top = len(BLOCKS) - 1
    return "".join(
        " " if not math.isfinite(c) else BLOCKS[round((c - low) / (high - low) * top) if high > low else top // 2]
        for c in cells
    )


# The metric a run's evals decide by, first found first: a rubric's score, the tool path's correct-call rate,
# speech's WER, OCR's CER, else eval loss (services/trainer/recipes/evals.py).
DECIDING = ("eval_rubric_score", "eval_correct_rate", "eval_wer", "eval_cer", "eval_loss")


def eval_line(run: pb.Run, events: Iterable[pb.RunEvent] = ()) -> str:
    """`runs show`'s lines for the metric the evals decide by (``DECIDING``, else the first): its sparkline, first
    and last value and the best step, then each eval's step and value; empty when the run has no evals."""
    evals = run_series(run, events).evals
    if not evals:
        return ""
    key = next((k for k in DECIDING if k in evals), next(iter(evals)))
    values = [value for _, value in evals[key]]
    best = f", best checkpoint at step {run.best_step}" if run.best_step else ""
    steps = ", ".join(f"{step} {value:.4g}" for step, value in evals[key])
    return (f"{key} {sparkline(values)} {values[0]:.4g} → {values[-1]:.4g} over {len(values)} evals{best}\n"
            f"evals (step {key}): {steps}")  # fmt: skip


def history(trainer: Any, run: pb.Run) -> list[pb.RunEvent]:
    """The run's events: all of them when it is final (the stream ends), else what arrives in a few seconds."""
    events: list[pb.RunEvent] = []
    timeout = None if run.state in FINAL else WATCH_LIVE_S
    try:
        for event in trainer.WatchRun(pb.WatchRunRequest(id=run.id, after_sequence=0), timeout=timeout):
            events.append(event)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED or run.state in FINAL:
            raise
    return events


def _count(curve: Curve, noun: str) -> str:
    return f"{len(curve)} {noun}{'s' * (len(curve) != 1)}"


@click.command("plot")
@click.argument("run_id")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="The PNG to write [default: RUN_ID.png].")
def plot(run_id: str, out: Path | None) -> None:
    """Draw a run's loss, evals and learning rate by step into a PNG."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        fail("plotting needs matplotlib", hint=escape("pip install 'distillery[plot]'"))  # [plot] is no markup
    with rpc_errors():
        trainer = Client.from_environment().trainer
        run = trainer.GetRun(pb.GetRunRequest(id=run_id))
        series = run_series(run, history(trainer, run))
    if series.empty():
        fail(f"run {run_id} has no metrics yet ({state_name(run.state)}): nothing to plot")
    out = out or Path(f"{run_id}.png")
    try:
        draw(series, out)
    except OSError as err:
        fail(f"cannot write {out}: {err.strerror or err}")
    drew = [f"training loss ({_count(series.loss, 'point')})"] if series.loss else []
    drew += [f"{key} ({_count(curve, 'eval')})" for key, curve in series.evals.items()]
    drew += [f"learning rate ({_count(series.learning_rate, 'point')})"] if series.learning_rate else []
    drew += [f"best checkpoint at step {series.best_step}"] if series.best_step else []
    drew += [f"early stop at step {series.early_stop_step}"] if series.early_stop_step else []
    console.print(f"wrote [bold]{escape(str(out))}[/bold]: {escape(', '.join(drew))}", highlight=False, soft_wrap=True)
    if not series.evals:
        console.print("[dim]no evals yet: set --eval-every to evaluate during training[/dim]")
