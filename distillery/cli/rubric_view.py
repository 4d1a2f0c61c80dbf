"""How the CLI shows a rubric's validation (``rubrics validate``, ``runs show``): per criterion the mean score
of the eval references and of the base answers, the spread, the rows it could not score and its problem."""

from __future__ import annotations

from distillery.cli.output import console, print_table
from distillery.trainer.v1 import trainer_pb2 as pb


def print_validation(shown: pb.RubricValidation) -> None:
    verdict = "[green]ok[/green]" if shown.ok else "[red]refused[/red]"
    console.print(f"rubric [bold]{shown.rubric_name}[/bold] v{shown.rubric_version} ({shown.rubric_id}) on "
                  f"{shown.rows} rows: {verdict}; base answers: {shown.base}")  # fmt: skip
    rows = [
        (c.name, c.kind, f"{c.weight:g}", f"{c.reference_mean:.2f}", f"{c.base_mean:.2f}", f"{c.spread:+.2f}",
         c.failures or "")
        for c in shown.criteria
    ]  # fmt: skip
    rows.append(("total", "", "", f"{shown.reference_total:.2f}", f"{shown.base_total:.2f}",
                 f"{shown.reference_total - shown.base_total:+.2f}", ""))  # fmt: skip
    print_table("Rubric scores (mean, 0 to 1)", ["criterion", "kind", "weight", "refs", "base", "spread", "failed"],
                rows, whole=["kind", "refs", "base", "spread"])  # fmt: skip
    for c in shown.criteria:
        if c.problem:
            console.print(f"[red]problem[/red]: {c.name} ({c.kind}) {c.problem}", highlight=False)
    for warning in shown.warnings:
        console.print(f"[yellow]warning[/yellow]: {warning}")
    usage = shown.judge_usage
    if usage.requests:
        console.print(f"judge: {usage.requests} requests, {usage.input_tokens:,} input and {usage.output_tokens:,} "
                      f"output tokens, ${usage.estimated_cost_usd:.4f}")  # fmt: skip
