"""`distillery runs plot` and the eval sparkline: a run's curves from its Run and events (unit tests on
real trainer_pb2 messages), the PNG checked by its pixels, and one tiny real run plotted through the CLI."""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_services import upload
from test_tracing_and_cli import cli_env
from test_training import QUICK, ROWS, run_request, watch
from tiny_models import build_llama

from distillery.cli import run_plots
from distillery.cli.run_plots import draw, eval_line, figure, plot, run_series, sparkline
from distillery.common.v1 import common_pb2
from distillery.trainer.v1 import trainer_pb2 as pb

BLUE = (0x1F, 0x77, 0xB4)  # tab:blue, the training loss


def metrics(step: int, **values: float) -> pb.RunEvent:
    return pb.RunEvent(metrics=pb.Metrics(step=step, values=values))


def a_run(**fields) -> pb.Run:
    return pb.Run(id="run_x", path=common_pb2.TRAINING_PATH_FINETUNE_TEXT, state=pb.RUN_STATE_SUCCEEDED, **fields)


def training(losses: list[float], every: int = 5) -> list[pb.RunEvent]:
    """A job's events: loss and learning rate each step, an eval every ``every`` steps, the closing summary."""
    n = len(losses)
    events = [pb.RunEvent(log=pb.LogLine(text="SFT begins")), metrics(0, eval_loss=losses[0] + 0.5)]
    for step, loss in enumerate(losses, start=1):
        events.append(metrics(step, loss=loss, learning_rate=1e-3 * (1 - step / (n + 1)), grad_norm=1.0))
        if step % every == 0:
            events.append(metrics(step, eval_mean_token_accuracy=step / n, eval_loss=loss + 0.3, eval_runtime=0.2))
    summary = {"eval_loss_before": losses[0], "eval_loss_after": losses[-1], "eval_rows": 5.0, "steps": n}
    return [*events, metrics(n, **summary)]


def test_series_take_loss_rate_and_evals_from_the_events_when_the_run_has_no_evals():
    events = training([3.0, 2.5, 2.0, 1.8, 1.5, 1.4, 1.2, 1.1, 1.0, 0.9])
    events.insert(3, metrics(2, loss=9.0))  # the same step again (a resumed job): the last one counts
    series = run_series(a_run(), events)
    assert [step for step, _ in series.loss] == list(range(1, 11))
    assert series.loss[1] == (2, 2.5) and series.loss[0] == (1, 3.0)
    assert series.learning_rate[0][0] == 1 and series.learning_rate[-1][0] == 10
    # eval_* of evals only, losses first: not the summary's eval_loss_before/after and eval_rows, nor an eval's time
    assert list(series.evals) == ["eval_loss", "eval_mean_token_accuracy"]
    assert series.evals["eval_loss"] == [(0, 3.5), (5, pytest.approx(1.8)), (10, pytest.approx(1.2))]
    assert series.evals_from == "metric events"
    assert (series.best_step, series.early_stop_step, series.stop) == (0, 0, "")
    assert series.title == "run_x · finetune-text · SUCCEEDED"


def test_series_prefer_the_runs_evals_and_mark_best_and_early_stop():
    run = a_run(best_step=20, stop_reason="early_stop", stop_step=30)
    run.evals.add(step=10, values={"rubric_score": 0.4, "eval_samples_per_second": 9.0})
    run.evals.add(step=20, values={"rubric_score": 0.8})
    run.evals.add(step=30, values={"rubric_score": 0.7})
    series = run_series(run, training([2.0] * 30, every=10))
    assert series.evals == {"rubric_score": [(10, 0.4), (20, 0.8), (30, 0.7)]}
    assert series.evals_from == "the run's evals"
    assert (series.best_step, series.early_stop_step, series.stop) == (20, 30, "early_stop at step 30")
    other = run_series(a_run(stop_reason="max_steps", stop_step=30), [])
    assert other.early_stop_step == 0 and other.stop == "max_steps at step 30" and other.empty()


def test_sparkline():
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8], width=8) == "▁▂▃▄▅▆▇█"
    assert sparkline([8, 1], width=4) == "██▁▁"  # stretched to the width
    assert sparkline([5.0, 5.0, 5.0], width=6) == "▄" * 6  # constant: flat, not a division by zero
    assert sparkline([0.3], width=5) == "▄" * 5
    assert sparkline([], width=5) == " " * 5
    assert sparkline([math.nan, math.nan], width=4) == " " * 4
    assert sparkline([0.0, math.nan, 1.0], width=3) == "▁ █"
    long = sparkline([float(i) for i in range(1000)], width=10)  # averaged into buckets
    assert len(long) == 10 and long[0] == "▁" and long[-1] == "█" and list(long) == sorted(long)
    assert len(sparkline([1.0, 2.0])) == 24  # the default width, whatever the length


def test_eval_line_shows_the_eval_metric():
    run = a_run(best_step=10)
    for step, value in ((0, 3.0), (5, 2.0), (10, 1.0), (15, 1.5)):
        run.evals.add(step=step, values={"eval_loss": value, "eval_mean_token_accuracy": 0.5})
    line = eval_line(run)
    assert line.startswith("eval_loss ") and "3 → 1.5 over 4 evals, best checkpoint at step 10" in line
    assert line.split()[1] == sparkline([3.0, 2.0, 1.0, 1.5])
    assert line.splitlines()[1] == "evals (step eval_loss): 0 3, 5 2, 10 1, 15 1.5"
    rated = a_run()  # the tool path decides by its correct-call rate, not the eval loss it also has
    for step, rate in ((2, 0.1), (4, 0.6)):
        rated.evals.add(step=step, values={"eval_loss": 1.0, "eval_correct_rate": rate})
    assert eval_line(rated).startswith("eval_correct_rate ") and "2 0.1, 4 0.6" in eval_line(rated)
    assert eval_line(a_run()) == ""
    assert eval_line(a_run(), training([2.0, 1.0], every=1)).startswith("eval_loss ")


def test_the_figure_draws_the_series():
    run = a_run(best_step=6, stop_reason="early_stop", stop_step=8)
    events = training([3.0, 2.5, 2.0, 1.8, 1.5, 1.4, 1.2, 1.1], every=2)
    series = run_series(run, events)
    fig = figure(series)
    top, bottom, scores = fig.axes  # loss and evals, the learning rate, the eval scores' own axis
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert list(lines["training loss"].get_xdata()) == [s for s, _ in series.loss]
    assert list(lines["training loss"].get_ydata()) == [v for _, v in series.loss]
    assert list(lines["eval_loss"].get_xdata()) == [0, 2, 4, 6, 8]
    assert lines["eval_loss"].get_marker() == "o" and lines["eval_loss"] in top.get_lines()
    assert lines["eval_mean_token_accuracy"] in scores.get_lines()
    assert list(bottom.get_lines()[0].get_ydata()) == [v for _, v in series.learning_rate]
    assert lines["best checkpoint (step 6)"].get_xdata()[0] == 6
    assert lines["early stop (step 8)"].get_xdata()[0] == 8
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend == ["training loss", "eval_loss", "eval_mean_token_accuracy",
                      "best checkpoint (step 6)", "early stop (step 8)"]  # fmt: skip
    assert (bottom.get_xlabel(), top.get_ylabel(), bottom.get_ylabel()) == ("step", "loss", "learning rate")
    assert fig._suptitle.get_text() == "run_x · finetune-text · SUCCEEDED"
    ring = [line for line in top.get_lines() if line.get_markersize() == 13]  # the best eval, circled
    assert [(list(r.get_xdata()), list(r.get_ydata())) for r in ring] == [([6], [pytest.approx(1.4 + 0.3)])]
    # A rubric's scores alone: on the one axis, named as evals.
    rubric = a_run()
    rubric.evals.add(step=5, values={"rubric_score": 0.5})
    scored = figure(run_series(rubric, []))
    assert len(scored.axes) == 1 and scored.axes[0].get_ylabel() == "eval score"
    assert [line.get_label() for line in scored.axes[0].get_lines()] == ["rubric_score (eval)"]
    # Without a learning rate or evals: one panel, loss only.
    only_loss = figure(run_series(a_run(), [metrics(1, loss=2.0), metrics(2, loss=1.0)]))
    assert len(only_loss.axes) == 1 and [line.get_label() for line in only_loss.axes[0].get_lines()] == [
        "training loss"
    ]


def pixels(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def test_the_png_is_drawn_from_the_runs_metrics(tmp_path):
    falling = training([3.0 - 0.1 * i for i in range(25)])
    rising = training([0.5 + 0.1 * i for i in range(25)])
    draw(run_series(a_run(), falling), tmp_path / "falling.png")
    draw(run_series(a_run(), rising), tmp_path / "rising.png")
    draw(run_series(a_run(), falling), tmp_path / "again.png")
    falling_image, rising_image = pixels(tmp_path / "falling.png"), pixels(tmp_path / "rising.png")
    assert falling_image.size == (1100, 715)  # 10 x 6.5 inches at 110 dpi
    assert len(falling_image.getcolors(1 << 20) or []) > 50  # drawn, not blank
    assert pixels(tmp_path / "again.png").tobytes() == falling_image.tobytes()  # the same data, the same image
    assert rising_image.tobytes() != falling_image.tobytes()
    # The loss line's blue (in the top panel) sits high on the left and low on the right for a falling loss,
    # and the other way round for a rising one.
    for image, left_high in ((falling_image, True), (rising_image, False)):
        top_panel = np.asarray(image)[: int(image.size[1] * 0.62)].astype(int)
        ys, xs = np.nonzero((np.abs(top_panel - BLUE) <= 30).all(axis=2))
        assert len(xs) > 200
        width = image.size[0]
        left, right = ys[xs < width * 0.3].mean(), ys[xs > width * 0.7].mean()
        assert (left < right) == left_high  # y grows downwards


class FakeTrainer:
    """GetRun and WatchRun of one run, as the trainer answers them."""

    def __init__(self, run: pb.Run, events: list[pb.RunEvent], cut: bool = False) -> None:
        self.run, self.events, self.cut, self.timeouts = run, events, cut, []

    def GetRun(self, request: pb.GetRunRequest) -> pb.Run:
        return self.run

    def WatchRun(self, request: pb.WatchRunRequest, timeout: float | None = None):
        self.timeouts.append(timeout)
        yield from self.events
        if self.cut:  # a run still going: the stream waits until the deadline
            raise Deadline()


class Deadline(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED


def fake_client(monkeypatch, trainer: FakeTrainer) -> None:
    monkeypatch.setattr(run_plots.Client, "from_environment", classmethod(lambda cls: SimpleNamespace(trainer=trainer)))


def test_plot_a_run_still_going_keeps_what_arrived(monkeypatch, tmp_path):
    running = pb.Run(id="run_live", path=common_pb2.TRAINING_PATH_FINETUNE_TEXT, state=pb.RUN_STATE_TRAINING)
    trainer = FakeTrainer(running, [metrics(1, loss=2.0, learning_rate=1e-3), metrics(2, loss=1.5)], cut=True)
    fake_client(monkeypatch, trainer)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(plot, ["run_live"])
    assert result.exit_code == 0, result.output
    assert "wrote run_live.png: training loss (2 points), learning rate (1 point)" in result.output
    assert "no evals yet" in result.output
    assert Image.open(tmp_path / "run_live.png").size == (1100, 715)
    assert trainer.timeouts == [run_plots.WATCH_LIVE_S]


def test_plot_of_a_run_without_metrics_fails_clearly(monkeypatch, tmp_path):
    queued = pb.Run(id="run_q", state=pb.RUN_STATE_QUEUED)
    fake_client(monkeypatch, FakeTrainer(queued, [pb.RunEvent(log=pb.LogLine(text="queued"))], cut=True))
    out = tmp_path / "q.png"
    result = CliRunner().invoke(plot, ["run_q", "--out", str(out)])
    assert result.exit_code == 1 and "run run_q has no metrics yet (QUEUED): nothing to plot" in result.output
    assert not out.exists()
    fake_client(monkeypatch, FakeTrainer(a_run(), training([2.0, 1.0])))
    result = CliRunner().invoke(plot, ["run_x", "--out", str(tmp_path / "no-such-dir" / "x.png")])
    assert result.exit_code == 1 and "cannot write" in result.output and "No such file or directory" in result.output


def test_plot_without_matplotlib_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result = CliRunner().invoke(plot, ["run_x", "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "pip install 'distillery[plot]'" in result.output


# --- a real tiny run, plotted through the CLI ---

EVERY = 6


def test_a_real_run_plotted_through_the_cli(services, client_for, make_tenant, tmp_path):
    tenant = make_tenant()
    client = client_for(tenant)
    student = str(build_llama(tmp_path / "tiny-llama"))
    sft = pb.SftSettings()
    sft.CopyFrom(QUICK)
    sft.eval_every_steps = EVERY
    run = client.trainer.CreateRun(run_request(upload(client, ROWS).dataset.id, student, sft))
    events = watch(client, run.id)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error

    out = tmp_path / "plot.png"
    result = CliRunner().invoke(plot, [run.id, "--out", str(out)], env=cli_env(services, tenant.api_key))
    assert result.exit_code == 0, result.output
    print(result.output)
    if example := os.environ.get("DISTILLERY_EXAMPLE_PLOT"):  # a copy to look at
        shutil.copy(out, example)
    series = run_series(done, events)
    losses = [e.metrics.values["loss"] for e in events if "loss" in e.metrics.values]
    assert len(series.loss) == len(losses) >= 4 and series.learning_rate
    assert f"training loss ({len(series.loss)} points)" in result.output
    # Evals happened during training (every EVERY steps, besides before and after), and were drawn.
    assert not [key for key in series.evals if key.endswith(("_runtime", "_per_second"))], series.evals
    eval_steps = {step for step, _ in series.evals["eval_loss"]}
    assert {EVERY, 2 * EVERY, 3 * EVERY} <= eval_steps, series.evals
    assert f"eval_loss ({len(series.evals['eval_loss'])} evals)" in result.output
    assert eval_line(done, events).startswith("eval_loss ")
    # The PNG is this run's curves: the same data drawn here gives the same pixels.
    image = pixels(out)
    assert image.size == (1100, 715) and len(image.getcolors(1 << 20) or []) > 50
    draw(series, tmp_path / "here.png")
    assert pixels(tmp_path / "here.png").tobytes() == image.tobytes()
