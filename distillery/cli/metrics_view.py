"""How `runs show` and `models show` print metrics: a distill-tools run's held-out tool-call
rates as one table (a row per stage: the base student, after SFT, after GRPO), the rest as
``name: value`` lines."""

from __future__ import annotations

from collections.abc import Mapping

from distillery.cli.output import console, print_table

STAGES = {"base": "base", "sft": "SFT", "grpo": "GRPO"}
RATES = {
    "valid_call_rate": "valid call", "right_tool_rate": "right tool", "schema_valid_rate": "schema valid",
    "args_match_rate": "args match", "no_call_rate": "no call", "correct_rate": "correct",
}  # fmt: skip


def print_metrics(metrics: Mapping[str, float]) -> None:
    rates = {f"{stage}_{rate}" for stage in STAGES for rate in RATES}
    for key, value in sorted(metrics.items()):
        if key not in rates:
            console.print(f"  {key}: {value:.4g}")
    stages = [stage for stage in STAGES if f"{stage}_correct_rate" in metrics]
    if not stages:
        return
    rows = [
        [STAGES[stage], *(percent(metrics.get(f"{stage}_{rate}")) for rate in RATES)] for stage in stages
    ]  # fmt: skip
    print_table("Held-out tool calls", ["stage", *RATES.values()], rows)
    steps, before = [], None
    for stage in stages:
        correct = metrics[f"{stage}_correct_rate"]
        change = "" if before is None else f" ({100 * (correct - before):+.0f} points)"
        steps.append(f"{STAGES[stage]} {percent(correct)}{change}")
        before = correct
    console.print("correct calls: " + " -> ".join(steps))


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"
