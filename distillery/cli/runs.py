"""distillery runs: list, show, watch, cancel, logs."""

from __future__ import annotations

import inspect
from typing import Any

import click

from distillery.cli.metrics_view import print_metrics
from distillery.cli.output import FAILED, as_dict, console, json_option, print_json, print_table, rpc_errors
from distillery.cli.rubric_view import print_validation
from distillery.cli.run_plots import eval_line, plot
from distillery.cli.run_watch import follow, generation_text
from distillery.cli.tool_run_options import tool_fields, tool_options
from distillery.client import Client
from distillery.common.v1 import common_pb2
from distillery.teacher.v1 import teacher_pb2
from distillery.trainer.v1 import trainer_pb2 as pb

TOOL_OPTION_NAMES = tuple(inspect.signature(tool_fields).parameters)
FINAL = {pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED}  # PAUSED is not final


def state_name(state: int) -> str:
    return pb.RunState.Name(state).removeprefix("RUN_STATE_")


def path_name(path: int) -> str:
    return common_pb2.TrainingPath.Name(path).removeprefix("TRAINING_PATH_").lower().replace("_", "-")


# The sft fields shown for a run or a recipe, in this order: what most changes a run first.
SFT_FIELDS = (
    "max_seq_length", "epochs", "max_steps", "learning_rate", "batch_size", "gradient_accumulation_steps",
    "eval_every_steps", "checkpoint_every_steps", "early_stopping_patience", "full_finetune", "lora_r",
    "lora_alpha", "lora_dropout", "seed",
)  # fmt: skip
BEFORE_SIZING = {pb.RUN_STATE_QUEUED, pb.RUN_STATE_VALIDATING, pb.RUN_STATE_GENERATING}


def compute_text(compute: pb.Compute) -> str:
    """``2 workers, 4 CPUs and 1 GPU (L4) each``; empty fields left out."""
    parts = [f"{compute.cpus_per_worker:g} CPUs"] * bool(compute.cpus_per_worker)
    if compute.gpus_per_worker:
        parts.append(f"{compute.gpus_per_worker} GPU" + f" ({compute.gpu_type})" * bool(compute.gpu_type))
    workers = f"{compute.workers} worker{'s' * (compute.workers != 1)}" if compute.workers else "workers: default"
    return workers + (f", {' and '.join(parts)} each" if parts else "")


@click.group("runs")
def group() -> None:
    """Training runs."""


group.add_command(plot)


PATHS = {
    "finetune-text": common_pb2.TRAINING_PATH_FINETUNE_TEXT,
    "distill-text": common_pb2.TRAINING_PATH_DISTILL_TEXT,
    "distill-tools": common_pb2.TRAINING_PATH_DISTILL_TOOLS,
    "finetune-asr": common_pb2.TRAINING_PATH_FINETUNE_ASR,
    "finetune-ocr": common_pb2.TRAINING_PATH_FINETUNE_OCR,
}
DEFAULT_RECIPE_PATHS = ("finetune-asr", "finetune-ocr")  # a run of these without --student uses its path's recipe


@group.command("create")
@click.option("--recipe", default="", metavar="NAME",
              help="A preset for the task (`distillery recipes list`): its base model, settings and compute; the "
              "flags you give override it, and its auto settings are sized from your dataset.")  # fmt: skip
@click.option("--path", "path", type=click.Choice(sorted(PATHS)), default=None,
              help="[default: finetune-text, or the recipe's first path]")  # fmt: skip
@click.option("--dataset", "dataset_id", default="", help="The training dataset (none for distill-tools --teacher).")
@click.option(
    "--student",
    "student_model",
    default="",
    help="Hub id (org/name) or a model directory under the trainer's model roots (the local stack's: "
    "$DISTILLERY_HOME/models), or one of your models (mdl_...) to train it further. Required without "
    "--recipe (but for finetune-asr and finetune-ocr: their recipe's model); with one, overrides its base model.",
)
@click.option("--language", default="", metavar="CODE",
              help="finetune-asr: the language spoken in every clip (en, fr, yue, ...), over the rows' own and "
              "detection from the audio.")  # fmt: skip
@click.option("--train-vision", is_flag=True, help="finetune-ocr: train the vision encoder too (default: frozen).")
@click.option("--image-mode", default="", metavar="MODE",
              help="finetune-ocr: the resolution mode, for models that have modes [default: the model's].")  # fmt: skip
@click.option("--eval-dataset", "eval_dataset_id", default="", help="An eval dataset (else a held-out share).")
@click.option("--eval-fraction", type=float, default=0.0, help="Share held out for eval [default: 0.1].")
@click.option("--name", "model_name", default="", help="Name of the registered model [default: the run id].")
@click.option("--epochs", type=int, default=0, help="[default: 3]")
@click.option("--max-steps", type=int, default=0, help="Stop after this many steps [default: epochs decide].")
@click.option("--learning-rate", type=float, default=0.0, help="[default: 2e-4 LoRA, 2e-5 full]")
@click.option("--batch-size", type=int, default=0, help="[default: 4]")
@click.option("--max-seq-length", type=int, default=0, help="[default: 1024]")
@click.option("--checkpoint-every", "checkpoint_every_steps", type=int, default=0, help="Steps [default: 50].")
@click.option(
    "--eval-every",
    "eval_every_steps",
    type=int,
    default=0,
    help="Steps between mid-training evals [default: about ten a run; -1: only before and after].",
)
@click.option(
    "--patience",
    "early_stopping_patience",
    type=int,
    default=0,
    help="Stop after this many evals without improvement [default: 3; -1: never stop early].",
)
@click.option("--full-finetune", is_flag=True, help="Train every weight instead of a LoRA adapter.")
@click.option("--lora-r", type=int, default=0, help="[default: 16]")
@click.option("--seed", type=int, default=0)
@click.option("--workers", type=int, default=0, help="Ray Train workers [default: the recipe's, else the "
              "deployment's]; the run is refused when no worker group of the deployment offers that many.")  # fmt: skip
@click.option("--gpus-per-worker", type=int, default=0, help="GPUs each worker gets [default: the recipe's where "
              "the deployment has GPU workers, else none]; refused when no worker group offers them.")  # fmt: skip
@click.option("--cpus-per-worker", type=float, default=0.0, help="CPUs each worker gets [default: the recipe's, at "
              "most its worker group's].")  # fmt: skip
@click.option("--gpu-type", default="", help="The GPU to train on, as Ray names it (L4, A100, H100...) "
              "[default: the recipe's where a worker group has it]; refused when no worker group has it.")  # fmt: skip
@click.option(
    "--system-prompt",
    "system_prompts",
    multiple=True,
    metavar="NAME=TEXT",
    help="distill-text: a named system prompt the teacher answers every input under (repeat for more).",
)
@click.option(
    "--teacher",
    default="",
    metavar="PROVIDER:MODEL",
    help="distill-text and --augment: the teacher, e.g. platform:smollm2 or openai:gpt-4.1-mini.",
)
@click.option(
    "--augment",
    "augment_count",
    type=int,
    default=0,
    help="finetune-text: have the teacher write this many new pairs like the train rows.",
)
@click.option("--temperature", type=float, default=0.0, help="Teacher temperature [default: 0 distill, 1 augment].")
@click.option("--max-output-tokens", type=int, default=0, help="Cap of one teacher answer [default: 512].")
@click.option(
    "--max-failed-fraction",
    type=float,
    default=0.0,
    help="Fail the run when more of the teacher's rows fail than this share [default: 0.05].",
)
@click.option(
    "--estimate",
    "estimate_only",
    is_flag=True,
    help="Print what the run would take (the teacher's rows, tokens and cost; the training steps, tokens and "
    "expected time on each compute) and stop without starting it.",
)
@click.option("--rubric", default="", metavar="NAME",
              help="A rubric (`distillery rubrics list`: an id, or a name for its latest version): checked on the "
              "eval set before training (the references and the base student's answers scored per criterion); "
              "a criterion that cannot score a row or tells no answers apart fails the run.")  # fmt: skip
@click.option("--validate-only", is_flag=True,
              help="With --rubric: stop after the rubric's check, before any training; `runs show` prints the "
              "scores.")  # fmt: skip
@tool_options
@click.option("--idempotency-key", default="", help="Repeat the command safely: the same key returns the same run.")
@click.option("--watch/--no-watch", "follow_it", default=False, help="Follow the run until it ends.")
@json_option
def create(
    recipe: str, path: str | None, dataset_id: str, student_model: str, eval_dataset_id: str, eval_fraction: float,
    model_name: str, system_prompts: tuple[str, ...], idempotency_key: str, follow_it: bool, as_json: bool,
    teacher: str, augment_count: int, temperature: float, max_output_tokens: int, max_failed_fraction: float,
    estimate_only: bool, workers: int, gpus_per_worker: int, cpus_per_worker: float, gpu_type: str, rubric: str,
    validate_only: bool, language: str, train_vision: bool, image_mode: str, **options: Any,
) -> None:  # fmt: skip
    """Start a training run; prints its id (and follows it with --watch)."""
    if not student_model and not recipe and path not in DEFAULT_RECIPE_PATHS:
        raise click.UsageError("give --student MODEL, or --recipe NAME (its base model is the student)")
    if path is None:
        path = "" if recipe else "finetune-text"  # with a recipe, the trainer takes the recipe's first path
    tools = tool_fields(**{name: options.pop(name) for name in TOOL_OPTION_NAMES})
    sft = options
    named = []
    for given in system_prompts:
        name, sep, text = given.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise click.BadParameter(f"{given!r}: write NAME=TEXT", param_hint="--system-prompt")
        named.append(teacher_pb2.NamedSystemPrompt(name=name.strip(), text=text))
    request = pb.CreateRunRequest(
        path=PATHS.get(path, 0), recipe=recipe, dataset_id=dataset_id, student_model=student_model,
        compute=pb.Compute(workers=workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                           gpu_type=gpu_type),
        eval_dataset_id=eval_dataset_id,
        eval_fraction=eval_fraction, model_name=model_name, idempotency_key=idempotency_key,
        sft=pb.SftSettings(**sft), system_prompts=named, teacher=teacher, augment_count=augment_count,
        max_failed_fraction=max_failed_fraction, tool_ids=tools["tool_ids"], seed_prompts=tools["seed_prompts"],
        objectives=tools["objectives"], tool_responses=tools["tool_responses"], mode=tools["mode"],
        rubric=rubric, validate_only=validate_only, language=language, train_vision=train_vision,
        image_mode=image_mode,
        generation=teacher_pb2.GenerationParameters(
            temperature=temperature, max_output_tokens=max_output_tokens, **tools["generation"]
        ),
    )  # fmt: skip
    if "grpo" in tools:
        request.grpo.CopyFrom(tools["grpo"])
    with rpc_errors():
        if estimate_only or (path == "distill-text" and not as_json):
            estimate = Client.from_environment().trainer.EstimateRun(request)
            if estimate_only and as_json:
                print_json(estimate)
            else:
                _print_estimate(estimate, teacher_only=not estimate_only)
        if estimate_only:
            return
        run = Client.from_environment().trainer.CreateRun(request)
        if as_json:
            print_json(run)
        else:
            console.print(f"created run [bold]{run.id}[/bold] ({state_name(run.state)})")
        if follow_it:
            final = follow(Client.from_environment(timeout=7 * 24 * 3600).trainer, run.id)
            if final != pb.RUN_STATE_SUCCEEDED:
                raise SystemExit(FAILED)


def _print_estimate(estimate: pb.RunEstimate, teacher_only: bool) -> None:
    """What the run would take: the teacher's part, then (unless ``teacher_only``) the training's."""
    if estimate.HasField("teacher"):
        teacher = estimate.teacher
        console.print(f"estimate: {teacher.rows} rows for the teacher, about {teacher.input_tokens:,} input and "
                      f"{teacher.output_tokens:,} output tokens, ${teacher.estimated_cost_usd:.4f}")  # fmt: skip
    if teacher_only:
        return
    size = f", a {estimate.student_params / 1e6:,.0f}M-parameter student" if estimate.student_params else ""
    console.print(
        f"training: {estimate.train_rows} train and {estimate.eval_rows} eval rows, {estimate.steps} steps, "
        f"about {estimate.tokens_to_process:,} tokens ({estimate.tokens_per_row:.0f} a row){size}"
    )
    rows = [
        (c.compute, f"{c.tokens_per_second:,.0f}", _duration(c.seconds), "measured" if c.measured else c.note)
        for c in estimate.compute
    ]  # fmt: skip
    if rows:
        print_table("Expected training time", ["compute", "tokens/s", "time", "from"], rows)
    for note in estimate.notes:
        console.print(f"note: {note}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


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
    console.print(f"dataset {run.dataset_id}, student {run.student_model}")
    _print_settings(run)
    if run.teacher:
        usage = run.teacher_usage
        console.print(f"teacher {run.teacher}: {usage.requests} requests, {usage.input_tokens:,} input and "
                      f"{usage.output_tokens:,} output tokens, ${usage.estimated_cost_usd:.4f}"
                      f"{'' if usage.billed or not usage.requests else ' (your own key: not billed)'}")  # fmt: skip
    if run.progress.total_steps:
        console.print(f"step {run.progress.step}/{run.progress.total_steps}")
    elif run.progress.rows_total:
        console.print(generation_text(run.progress))
    if run.model_id:
        console.print(f"model [bold]{run.model_id}[/bold]")
    print_metrics(run.metrics)
    if evals := eval_line(run):
        console.print(evals, highlight=False)
    if run.stop_reason:
        at = f" at step {run.stop_step}" if run.stop_step else ""
        best = f"; the best checkpoint, step {run.best_step}, is the one kept" if run.best_step else ""
        console.print(f"training stopped: {run.stop_reason.replace('_', ' ')}{at}{best}")
    if run.HasField("rubric_validation"):
        print_validation(run.rubric_validation)
    elif run.request.rubric and run.state not in FINAL:
        console.print(f"rubric {run.request.rubric}: checked on the eval set before training")
    if run.HasField("error"):
        console.print(f"[red]{run.error.code}[/red]: {run.error.message}")


def _print_settings(run: pb.Run) -> None:
    """The recipe, the settings the run trains with (those sized from its dataset marked auto) and its compute."""
    request = run.request
    if request.recipe:
        console.print(f"recipe [bold]{request.recipe}[/bold]")
    auto = set(request.auto_fields)
    how = "auto: sized when the split is ready" if run.state in BEFORE_SIZING else "auto: sized from the dataset"
    rows = [(name, getattr(request.sft, name), how if name in auto else "") for name in SFT_FIELDS]
    print_table("Settings", ["setting", "value", ""], rows)
    if request.HasField("compute"):
        console.print(f"compute {compute_text(request.compute)}")


@group.command("watch")
@click.argument("run_id")
def watch(run_id: str) -> None:
    """Follow a run live until it ends or pauses; exits 1 if it ends FAILED or CANCELLED."""
    with rpc_errors():
        final = follow(Client.from_environment(timeout=7 * 24 * 3600).trainer, run_id)
    if final == pb.RUN_STATE_PAUSED:
        console.print(f"{run_id} is paused: `distillery runs resume {run_id}` goes on from its checkpoint")
    elif final != pb.RUN_STATE_SUCCEEDED:
        raise SystemExit(FAILED)


@group.command("pause")
@click.argument("run_id")
def pause(run_id: str) -> None:
    """Pause a TRAINING run: its job saves a checkpoint and stops, freeing its compute; the run keeps its slot."""
    with rpc_errors():
        run = Client.from_environment().trainer.PauseRun(pb.PauseRunRequest(id=run_id))
    console.print(f"{run.id} is {state_name(run.state)}: its job saves a checkpoint and stops; "
                  f"`distillery runs resume {run.id}` goes on from there")  # fmt: skip


@group.command("resume")
@click.argument("run_id")
def resume(run_id: str) -> None:
    """Resume a PAUSED run from the checkpoint its job saved."""
    with rpc_errors():
        run = Client.from_environment().trainer.ResumeRun(pb.ResumeRunRequest(id=run_id))
    console.print(f"{run.id} is {state_name(run.state)}: a new job goes on from the checkpoint")


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
