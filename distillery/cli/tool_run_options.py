"""The `runs create` options of the tool-calling path (distill-tools), and the request
fields they make: the tools, seed prompts and objectives, the teacher's generation
parameters, and GRPO's settings in SFT + RL mode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from distillery.common.v1 import common_pb2
from distillery.teacher.v1 import teacher_pb2
from distillery.trainer.v1 import trainer_pb2 as pb

MODES = {"sft": common_pb2.TRAINING_MODE_SFT, "sft-rl": common_pb2.TRAINING_MODE_SFT_RL}
OPTIONS = [
    click.option("--tool", "tool_ids", multiple=True, metavar="ID", help="distill-tools: a tool to call (repeat)."),
    click.option("--seed-prompt", "seed_prompts", multiple=True, metavar="TEXT",
                 help="distill-tools: a request a user would make (repeat)."),
    click.option("--objective", "objectives", multiple=True, metavar="TEXT",
                 help="distill-tools: how the model should behave (repeat)."),
    click.option("--tool-response", "tool_responses", multiple=True, metavar="TOOL=RESULT",
                 help="distill-tools: an example result of a tool, used instead of a simulated one (repeat)."),
    click.option("--mode", type=click.Choice(list(MODES)), default="sft", show_default=True,
                 help="distill-tools: SFT only, or SFT then GRPO."),
    click.option("--trajectories", type=int, default=0, help="Trajectories per prompt [default: 2]."),
    click.option("--paraphrases", type=int, default=None, help="Rewordings of each seed prompt [default: 2]."),
    click.option("--no-tool-share", type=float, default=None,
                 help="Share of prompts where no tool should be called [default: 0.2]."),
    click.option("--max-turns", type=int, default=0, help="Most assistant turns in a trajectory [default: 4]."),
    click.option("--semantic-check", is_flag=True, help="Have the teacher judge that each call answers the request."),
    click.option("--grpo-generations", type=int, default=0, help="GRPO: completions per prompt [default: 4]."),
    click.option("--grpo-max-completion", type=int, default=0, help="GRPO: most completion tokens [default: 128]."),
    click.option("--grpo-beta", type=float, default=0.0, help="GRPO: KL weight [default: 0]."),
    click.option("--grpo-learning-rate", type=float, default=0.0, help="GRPO: learning rate."),
    click.option("--grpo-steps", type=int, default=0, help="GRPO: steps [default: 30]."),
    click.option("--grpo-temperature", type=float, default=0.0,
                 help="GRPO: sampling temperature, in (0, 2] [default: 1.0]."),
    click.option("--grpo-prompts-per-step", type=int, default=0, help="GRPO: prompts per step [default: 2]."),
]  # fmt: skip


def tool_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(OPTIONS):
        command = option(command)
    return command


def tool_fields(
    tool_ids: tuple[str, ...], seed_prompts: tuple[str, ...], objectives: tuple[str, ...],
    tool_responses: tuple[str, ...], mode: str, trajectories: int, paraphrases: int | None,
    no_tool_share: float | None, max_turns: int, semantic_check: bool, grpo_generations: int,
    grpo_max_completion: int, grpo_beta: float, grpo_learning_rate: float, grpo_steps: int,
    grpo_temperature: float, grpo_prompts_per_step: int,
) -> dict[str, Any]:  # fmt: skip
    """CreateRunRequest fields (``generation`` as parameters to merge) from the options."""
    examples = []
    for given in tool_responses:
        name, sep, result = given.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{given!r}: write TOOL=RESULT", param_hint="--tool-response")
        examples.append(teacher_pb2.ToolResponseExample(tool_name=name.strip(), response=result))
    generation: dict[str, Any] = {"trajectories_per_prompt": trajectories, "max_turns": max_turns,
                                  "semantic_check": semantic_check}  # fmt: skip
    if paraphrases is not None:
        generation["paraphrases"] = paraphrases
    if no_tool_share is not None:
        generation["no_tool_share"] = no_tool_share
    fields: dict[str, Any] = {
        "tool_ids": list(tool_ids), "seed_prompts": list(seed_prompts), "objectives": list(objectives),
        "tool_responses": examples, "mode": MODES[mode], "generation": generation,
    }  # fmt: skip
    if mode == "sft-rl":
        fields["grpo"] = pb.GrpoSettings(
            num_generations=grpo_generations, max_completion_length=grpo_max_completion, beta=grpo_beta,
            learning_rate=grpo_learning_rate, max_steps=grpo_steps, temperature=grpo_temperature,
            prompts_per_step=grpo_prompts_per_step,
        )  # fmt: skip
    return fields
