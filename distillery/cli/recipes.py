"""distillery recipes: list, show. A recipe is a vetted preset (base model, settings, compute) for a kind of
task; `distillery runs create --recipe NAME` uses one (docs/recipes.md)."""

from __future__ import annotations

import click

from distillery.cli.output import as_dict, console, json_option, print_json, print_table, rpc_errors
from distillery.cli.runs import SFT_FIELDS, compute_text, path_name
from distillery.client import Client
from distillery.trainer.v1 import trainer_pb2 as pb


@click.group("recipes")
def group() -> None:
    """Training presets by kind of task: base model, settings, compute."""


@group.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List the recipes a run can name."""
    with rpc_errors():
        reply = Client.from_environment().trainer.ListRecipes(pb.ListRecipesRequest())
    if as_json:
        print_json([as_dict(r) for r in reply.recipes])
        return
    rows = [(r.name, r.task, r.base_model, "yes" if r.available else "later") for r in reply.recipes]
    print_table("Recipes", ["name", "task", "base model", "trains"], rows, whole=["task", "base model", "trains"])
    console.print("[dim]`distillery recipes show NAME` shows one; `distillery runs create --recipe NAME` uses it[/dim]")


@group.command("show")
@click.argument("name")
@json_option
def show(name: str, as_json: bool) -> None:
    """Show one recipe: its base model, settings (auto ones sized from your dataset) and compute."""
    with rpc_errors():
        recipe = Client.from_environment().trainer.GetRecipe(pb.GetRecipeRequest(name=name))
    if as_json:
        print_json(recipe)
        return
    later = "" if recipe.available else " [yellow](its path arrives in a later version)[/yellow]"
    console.print(f"[bold]{recipe.name}[/bold] ({recipe.task}){later}: {recipe.description}")
    console.print(f"paths {', '.join(path_name(p) for p in recipe.paths)}; base model {recipe.base_model}")
    console.print(f"compute {compute_text(recipe.compute)}")
    auto = set(recipe.auto_fields)
    rows = []
    for field in SFT_FIELDS:
        value = getattr(recipe.sft, field)
        if field in auto:
            rows.append((field, f"auto (at most {value})" if value else "auto"))
        elif value:
            rows.append((field, value))
    print_table("SFT settings (others: the platform's defaults)", ["setting", "value"], rows)
    grpo = [(f.name, value) for f in recipe.grpo.DESCRIPTOR.fields if (value := getattr(recipe.grpo, f.name))]
    if grpo:
        print_table("GRPO settings (SFT + RL runs: --mode sft-rl)", ["setting", "value"], grpo)
