"""distillery models optimize | profile | try: a model's optimization profiles (docs/optimization.md)."""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path

import click
import grpc
from google.protobuf import json_format
from rich.table import Table

from distillery.cli.output import console, fail, json_option, print_json, rpc_errors
from distillery.cli.try_prompts import Prompt, eval_prompts, read_prompts
from distillery.client import Client
from distillery.registry.v1 import registry_pb2
from distillery.teacher.v1 import teacher_pb2
from distillery.trainer.v1 import trainer_pb2

_VECTOR = re.compile(r"^(?P<name>[^=]+)=(?P<strength>[-+0-9.eE]+)(?:@(?P<first>\d+)-(?P<last>\d+))?$")


def parse_vector(text: str) -> registry_pb2.AttachedVector:
    """NAME=STRENGTH[@FIRST-LAST] (a vector's name or id; layers 0-based, inclusive)."""
    found = _VECTOR.match(text.strip())
    try:
        strength = float(found["strength"]) if found else None
    except ValueError:
        strength = None
    if found is None or strength is None:
        raise click.BadParameter(f"{text!r}: give NAME=STRENGTH or NAME=STRENGTH@FIRST-LAST (e.g. concise=0.15@12-16)")
    name = found["name"].strip()
    attached = registry_pb2.AttachedVector(strength=strength)
    if name.startswith("vec_"):
        attached.vector_id = name
    else:
        attached.vector_name = name
    if found["first"] is not None:
        attached.first_layer, attached.last_layer = int(found["first"]), int(found["last"])
    return attached


def current_profile(client: Client, model_id: str, name: str) -> registry_pb2.Profile:
    """The profile as it is now; an empty one when the model has none of that name."""
    try:
        return client.registry.GetProfile(registry_pb2.GetProfileRequest(model_id=model_id, name=name))
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND or "no profile" not in (err.details() or ""):
            raise
    return registry_pb2.Profile(model_id=model_id, name=name)


@click.command("optimize")
@click.argument("model_id")
@click.option("--profile", "name", default="default", show_default=True, help="The profile to set.")
@click.option(
    "--vector",
    "vectors",
    multiple=True,
    metavar="NAME=STRENGTH[@FIRST-LAST]",
    help="Attach a vector (repeatable; replaces the attached ones), e.g. concise=0.15 or concise=0.15@12-16.",
)
@click.option("--no-vectors", is_flag=True, help="Attach no vectors.")
@click.option("--greedy", is_flag=True, help="Decode greedily.")
@click.option("--temperature", type=float, help="Sample at this temperature (above 0, at most 2).")
@click.option("--top-p", type=float, help="Sample from the smallest set of tokens whose probability reaches this.")
@click.option("--top-k", type=int, help="Sample from the k likeliest tokens (0: no cut).")
@click.option("--min-p", type=float, help="Drop tokens below this fraction of the likeliest one's probability.")
@click.option("--repetition-penalty", type=float, help="Above 1 discourages repeating tokens (1: none).")
@click.option("--max-tokens", type=int, help="The most tokens an answer may have (1 to 2048).")
@click.option("--stop", "stops", multiple=True, help="Text that ends the answer, not included (repeatable, up to 4).")
@click.option("--no-stop", is_flag=True, help="Remove the stop strings.")
@json_option
def optimize(
    model_id: str, name: str, vectors: tuple[str, ...], no_vectors: bool, greedy: bool, temperature: float | None,
    top_p: float | None, top_k: int | None, min_p: float | None, repetition_penalty: float | None,
    max_tokens: int | None, stops: tuple[str, ...], no_stop: bool, as_json: bool,
) -> None:  # fmt: skip
    """Set a model's optimization profile: attached steering vectors and sampling settings.

    Only the settings given change: the others keep the profile's current values (a new profile starts with
    none set: greedy decoding, the model's own token budget). The "default" profile applies to every
    Generate and endpoint request that names no other (`models profile MODEL` prints it)."""
    if greedy and temperature is not None:
        raise click.UsageError("give --greedy or --temperature, not both")
    if vectors and no_vectors:
        raise click.UsageError("give --vector or --no-vectors, not both")
    attached = [parse_vector(v) for v in vectors]
    with rpc_errors():
        client = Client.from_environment(timeout=120)
        profile = current_profile(client, model_id, name)
        sampling = profile.sampling
        if greedy:
            sampling.strategy = "greedy"
            sampling.ClearField("temperature")
        if temperature is not None:
            sampling.strategy, sampling.temperature = ("sample" if temperature > 0 else "greedy"), temperature
        for field, value in (("top_p", top_p), ("top_k", top_k), ("min_p", min_p),
                             ("repetition_penalty", repetition_penalty), ("max_tokens", max_tokens)):  # fmt: skip
            if value is not None:
                setattr(sampling, field, value)
        if stops or no_stop:
            del sampling.stop[:]
            sampling.stop.extend(stops)
        keep = [] if no_vectors else attached or list(profile.vectors)
        saved = client.registry.SetProfile(
            registry_pb2.SetProfileRequest(model_id=model_id, name=name, vectors=keep, sampling=sampling)
        )
    if as_json:
        print_json(saved)
        return
    print_profile(saved)


def sampling_words(s: registry_pb2.Sampling) -> str:
    """The settings set, as `--flag value` words ("" for none)."""
    values = json_format.MessageToDict(s, preserving_proto_field_name=True)
    return ", ".join(f"{k.replace('_', '-')} {json.dumps(v)}" for k, v in values.items()) or "none set"


def print_profile(p: registry_pb2.Profile) -> None:
    when = p.updated_at.ToDatetime().strftime("%Y-%m-%d %H:%M UTC") if p.updated_at.seconds else ""
    console.print(f"[bold]{p.model_id}[/bold] profile [bold]{p.name}[/bold] (updated {when})", highlight=False)
    console.print(f"  sampling: {sampling_words(p.sampling)}", highlight=False)
    for v in p.vectors:
        layers = f" layers {v.first_layer}-{v.last_layer}" if v.first_layer or v.last_layer else ""
        console.print(f"  vector {v.vector_name or v.vector_id} ({v.vector_id}) strength {v.strength:g}{layers}",
                      highlight=False)  # fmt: skip
    if not p.vectors:
        console.print("  vectors: none", highlight=False)


@click.command("profile")
@click.argument("model_id")
@click.option("--profile", "name", default="", help="One profile (default: all of the model's).")
@click.option("--delete", is_flag=True, help="Delete the profile (--profile, default: default).")
@json_option
def profile(model_id: str, name: str, delete: bool, as_json: bool) -> None:
    """Print a model's optimization profiles (or one), or delete one."""
    with rpc_errors():
        client = Client.from_environment()
        if delete:
            client.registry.DeleteProfile(registry_pb2.DeleteProfileRequest(model_id=model_id, name=name or "default"))
            console.print(f"deleted profile {name or 'default'} of {model_id}")
            return
        if name:
            found = [client.registry.GetProfile(registry_pb2.GetProfileRequest(model_id=model_id, name=name))]
        else:
            found = list(client.registry.ListProfiles(registry_pb2.ListProfilesRequest(model_id=model_id)).profiles)
    if as_json:
        print_json(
            found[0] if name else [json_format.MessageToDict(p, preserving_proto_field_name=True) for p in found]
        )
        return
    if not found:
        console.print(f"{model_id} has no profile: set one with `distillery models optimize {model_id} ...`")
    for p in found:
        print_profile(p)


def rubric_of(client: Client, model: registry_pb2.Model) -> trainer_pb2.Rubric | None:
    """The rubric the model's run was made with, when it had one (and the run is still there)."""
    try:
        run = client.trainer.GetRun(trainer_pb2.GetRunRequest(id=model.run_id))
        return (
            client.trainer.GetRubric(trainer_pb2.GetRubricRequest(rubric=run.request.rubric))
            if run.request.rubric
            else None
        )
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def judged(
    client: Client, rubric: trainer_pb2.Rubric, prompts: list[str], answers: list[str], references: Sequence[str] = ()
) -> list[float] | None:  # fmt: skip
    """Each answer's score on [0, 1] on the rubric's judge criteria (weighted), through the teacher's JudgeAnswers
    under the rubric's recorded prompts (with each row's reference answer where there is one); None when the
    rubric has no judge criterion (the other kinds are computed by the trainer's evaluation, not here)."""
    references = list(references) or [""] * len(answers)
    criteria = [c for c in rubric.criteria if c.kind == "judge" and c.judge_prompt.system]
    if not criteria:
        return None
    totals, weights = [0.0] * len(answers), 0.0
    for c in criteria:
        params = json_format.MessageToDict(c.params)
        scale = params.get("scale") or [1, 5]
        low, high = (scale.get("min", 1), scale.get("max", 5)) if isinstance(scale, dict) else scale
        reply = client.teacher.JudgeAnswers(teacher_pb2.JudgeAnswersRequest(
            teacher=params.get("judge", ""), system_prompt=c.judge_prompt.system,
            user_template=c.judge_prompt.user_template, scale_min=int(low), scale_max=int(high),
            rows=[teacher_pb2.JudgeRow(input=p, answer=a, reference=r)
                  for p, a, r in zip(prompts, answers, references, strict=True)],
        ))  # fmt: skip
        weight = c.weight or 1.0
        weights += weight
        for i, score in enumerate(reply.scores):
            totals[i] += weight * (0.0 if score.error else (score.score - low) / (high - low))
    return [t / weights for t in totals]


@click.command("try")
@click.argument("model_id")
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='The prompts: JSONL rows with a "prompt" (or "input"), or one per line.')  # fmt: skip
@click.option("--eval-dataset", "dataset_id", default="", metavar="ID",
              help="Instead of --prompts: the rows of the eval side of this dataset's newest split, asked as the "
              "model was trained (system prompt included), each with its reference answer.")  # fmt: skip
@click.option("--all-rows", is_flag=True, help="With --eval-dataset: the dataset's rows, not its eval side.")
@click.option(
    "--profile",
    "names",
    multiple=True,
    help="Compare with this profile (once: no profile vs it; twice: the two). Default: the default one.",
)
@click.option("--limit", type=click.IntRange(1, 200), default=10, show_default=True, help="The first N prompts.")
@json_option
def try_(
    model_id: str, prompts_file: Path | None, dataset_id: str, all_rows: bool, names: tuple[str, ...], limit: int,
    as_json: bool,
) -> None:  # fmt: skip
    """Answer the same prompts without the profile and with it (or with two profiles), side by side.

    The prompts come from a file (--prompts) or a dataset's eval rows (--eval-dataset). Each answer shows its
    length in tokens and its latency; the last line the means. Where the model's run had a rubric with judge
    criteria, each answer is scored by its judge (the teacher's JudgeAnswers)."""
    if len(names) > 2:
        raise click.UsageError("give --profile at most twice")
    if (prompts_file is None) == (not dataset_id):
        raise click.UsageError("give either --prompts FILE or --eval-dataset ID (one of them, not both)")
    if all_rows and not dataset_id:
        raise click.UsageError("--all-rows goes with --eval-dataset")
    # (label, the request's profile): no profile vs the one named, or the default ("" applies it when there is one).
    asked = [("none", "none"), *[(n, n) for n in names]] if len(names) < 2 else [(n, n) for n in names]
    if len(asked) < 2:
        asked.append(("default", ""))
    columns = [label for label, _ in asked]
    results: dict[str, list[registry_pb2.GenerateResponse]] = {c: [] for c in columns}
    with rpc_errors():
        client = Client.from_environment(timeout=600)
        prompts: list[Prompt] = (
            read_prompts(prompts_file)[:limit] if prompts_file else eval_prompts(client, dataset_id, all_rows, limit)
        )
        if not prompts:
            fail(f"{prompts_file or dataset_id} holds no prompt")
        model = client.registry.GetModel(registry_pb2.GetModelRequest(id=model_id))
        for prompt in prompts:
            for column, name in asked:
                results[column].append(client.registry.Generate(registry_pb2.GenerateRequest(
                    model_id=model_id, messages=prompt.messages, tools_json=prompt.tools_json, profile=name,
                )))  # fmt: skip
        rubric = rubric_of(client, model)
        scores: dict[str, list[float]] = {}
        texts, references = [p.text for p in prompts], [p.reference for p in prompts]
        for column in columns if rubric else []:
            answers = [r.message.content for r in results[column]]
            found = judged(client, rubric, texts, answers, references) if rubric else None
            if found is not None:
                scores[column] = found
    if as_json:
        print_json([
            {"prompt": p.text, **({"system": p.system} if p.system else {}),
             **({"reference": p.reference} if p.reference else {}),
             **{c: {"answer": results[c][i].message.content, "tokens": results[c][i].completion_tokens,
                    "latency_ms": results[c][i].latency_ms,
                    **({"score": scores[c][i]} if scores.get(c) else {})} for c in columns}}
            for i, p in enumerate(prompts)
        ])  # fmt: skip
        return
    table = Table(show_lines=True, expand=True)
    for column in columns:
        table.add_column(f"profile {column}", ratio=1, overflow="fold")
    for i, prompt in enumerate(prompts):
        reference = f"[dim]reference:[/dim] {_escape(prompt.reference)}" if prompt.reference else ""
        table.add_row(f"[bold]{i + 1}. {_escape(prompt.text)}[/bold]", reference, *[""] * (len(columns) - 2))
        table.add_row(*[_cell(results[c][i], scores[c][i] if c in scores else None) for c in columns])
    console.print(table)
    for column in columns:
        replies = results[column]
        line = (f"profile {column}: mean length {statistics.mean(r.completion_tokens for r in replies):.1f} tokens, "
                f"mean latency {statistics.mean(r.latency_ms for r in replies):.0f} ms")  # fmt: skip
        if scores.get(column):
            line += f", mean rubric score {statistics.mean(scores[column]):.2f} ({rubric.name if rubric else ''})"
        console.print(line, highlight=False)


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


def _cell(reply: registry_pb2.GenerateResponse, score: float | None) -> str:
    facts = f"{reply.completion_tokens} tokens, {reply.latency_ms:.0f} ms" + (
        f", score {score:.2f}" if score is not None else ""
    )
    return f"{_escape(reply.message.content)}\n[dim]({facts})[/dim]"
