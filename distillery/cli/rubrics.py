"""distillery rubrics: create, list, show, validate. A rubric is a named, versioned set of weighted criteria
that score a model's answers (docs/rubrics.md); `distillery runs create --rubric NAME` checks it on the eval
set before training, and `--validate-only` stops there."""

from __future__ import annotations

import json
from pathlib import Path

import click

from distillery.cli.output import FAILED, as_dict, console, fail, json_option, print_json, print_table, rpc_errors
from distillery.cli.rubric_view import print_validation
from distillery.cli.run_watch import follow
from distillery.client import Client
from distillery.common.v1 import common_pb2
from distillery.trainer.v1 import trainer_pb2 as pb

FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


@click.group("rubrics")
def group() -> None:
    """Rubrics: weighted criteria that score a model's answers."""


@group.command("create")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default="", help="Store it under this name instead of the file's.")
@json_option
def create(file: Path, name: str, as_json: bool) -> None:
    """Store the rubric in FILE (YAML or JSON) as the next version of its name."""
    text = file.read_text(encoding="utf-8")
    request = pb.CreateRubricRequest(text=text, format=FORMATS.get(file.suffix.lower(), ""), name=name)
    with rpc_errors():
        rubric = Client.from_environment().trainer.CreateRubric(request)
    if as_json:
        print_json(rubric)
        return
    console.print(f"rubric [bold]{rubric.name}[/bold] v{rubric.version} ({rubric.id}), "
                  f"{len(rubric.criteria)} criteria")  # fmt: skip


@group.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List your rubrics, every version, newest first."""
    with rpc_errors():
        reply = Client.from_environment().trainer.ListRubrics(pb.ListRubricsRequest())
    if as_json:
        print_json([as_dict(r) for r in reply.rubrics])
        return
    rows = [(r.id, r.name, r.version, ", ".join(c.name for c in r.criteria), r.created_at.ToJsonString())
            for r in reply.rubrics]  # fmt: skip
    print_table("Rubrics", ["id", "name", "version", "criteria", "created"], rows, whole=["name"])


@group.command("show")
@click.argument("rubric")
@json_option
def show(rubric: str, as_json: bool) -> None:
    """Show a rubric (an id, or a name: its latest version): its criteria and each judge's recorded prompt."""
    with rpc_errors():
        found = Client.from_environment().trainer.GetRubric(pb.GetRubricRequest(rubric=rubric))
    if as_json:
        print_json(found)
        return
    about = f": {found.description}" if found.description else ""
    console.print(f"[bold]{found.name}[/bold] v{found.version} ({found.id}){about}")
    rows = [(c.name, c.kind, f"{c.weight:g}", json.dumps(as_dict(c.params) if c.params.fields else {}))
            for c in found.criteria]  # fmt: skip
    print_table("Criteria", ["name", "kind", "weight", "params"], rows, whole=["kind"])
    for c in found.criteria:
        if c.HasField("judge_prompt"):
            console.print(f"\n[bold]{c.name}[/bold]: the judge's prompt (version {c.judge_prompt.version})",
                          highlight=False)  # fmt: skip
            console.print(c.judge_prompt.system, markup=False, highlight=False)
            console.print(c.judge_prompt.user_template, markup=False, highlight=False)


@group.command("validate")
@click.argument("rubric")
@click.option("--dataset", "dataset_id", required=True, help="A pairs dataset: the rows scored (--answers), or "
              "the run's training dataset (--student).")  # fmt: skip
@click.option("--answers", "answers_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A JSON list of answers, one per row scored (the dataset's first rows, in order).")  # fmt: skip
@click.option("--student", "student_model", default="",
              help="Score the base student's answers: a validate-only run asks it the eval prompts (a short Ray "
              "job), with no training.")  # fmt: skip
@click.option("--eval-dataset", "eval_dataset_id", default="", help="--student: the eval set (else a held-out "
              "share of --dataset).")  # fmt: skip
@click.option("--rows", "max_rows", type=int, default=0, help="Without --answers: how many rows [default: 16].")
@json_option
def validate(rubric: str, dataset_id: str, answers_file: Path | None, student_model: str, eval_dataset_id: str,
             max_rows: int, as_json: bool) -> None:  # fmt: skip
    """Score the references and some answers with the rubric, per criterion; exits 1 when it is refused."""
    if answers_file and student_model:
        raise click.UsageError("give --answers FILE or --student MODEL, not both")
    with rpc_errors():
        trainer = Client.from_environment().trainer
        if student_model:
            shown = _validate_with_run(trainer, rubric, dataset_id, eval_dataset_id, student_model, as_json)
        else:
            answers = _answers(answers_file) if answers_file else []
            shown = trainer.ValidateRubric(pb.ValidateRubricRequest(rubric=rubric, dataset_id=dataset_id,
                                                                    answers=answers, max_rows=max_rows))  # fmt: skip
    if as_json:
        print_json(shown)
    else:
        print_validation(shown)
    if not shown.ok:
        raise SystemExit(FAILED)


def _answers(path: Path) -> list[str]:
    try:
        answers = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        fail(f"{path} is not JSON: {err}")
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        fail(f"{path} must hold a JSON list of answers (strings), one per row scored")
    return answers


def _validate_with_run(
    trainer, rubric: str, dataset_id: str, eval_dataset_id: str, student_model: str, as_json: bool
) -> pb.RubricValidation:  # fmt: skip
    """A validate-only run: the base student answers the eval prompts on Ray, the trainer scores them."""
    run = trainer.CreateRun(pb.CreateRunRequest(
        path=common_pb2.TRAINING_PATH_FINETUNE_TEXT, dataset_id=dataset_id, eval_dataset_id=eval_dataset_id,
        student_model=student_model, rubric=rubric, validate_only=True,
    ))  # fmt: skip
    if not as_json:
        console.print(f"validate-only run [bold]{run.id}[/bold]: the base student answers the eval prompts")
    follow(Client.from_environment(timeout=24 * 3600).trainer, run.id)
    done = trainer.GetRun(pb.GetRunRequest(id=run.id))
    if not done.HasField("rubric_validation"):
        fail(f"run {run.id} ended {pb.RunState.Name(done.state).removeprefix('RUN_STATE_')} before the rubric "
             f"was scored: {done.error.code}: {done.error.message}")  # fmt: skip
    return done.rubric_validation
