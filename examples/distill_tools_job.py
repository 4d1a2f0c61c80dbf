"""Distillation - Tool Calling on the local stack, with no outside key (`make distill-tools`).

The student is SmolLM2-135M-Instruct (the demo model, converted for training). No teacher
model that can call tools is reachable here, so the trajectories come from the TEMPLATE
STAND-IN TEACHER (``examples/tools/stand_in_teacher.py``): phrasing templates filled from a
seeded generator, standing in for a real teacher model. It:

1. writes the stand-in teacher's trajectories (240 requests over 4 tools, a fifth of them
   wanting no tool) and uploads them as a tool-calls dataset;
2. starts a distill-tools run on that dataset as it is (no teacher), SFT then GRPO
   (``TRAINING_MODE_SFT_RL``), holding out 12.5% of the requests; the recipe evaluates the
   student on the held-out requests before training, after SFT and after GRPO;
3. prints each stage's held-out rates, the SFT and GRPO deltas in points, and where GRPO's
   step time goes;
4. asks the registered model three new requests through Generate, as a user would
   (`distillery models generate MODEL TEXT --tools`), and prints the calls it made.

Running it again reuses the finished run with the same settings (a run still going is followed).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

from distillery.client import Client, home
from distillery.common.v1 import common_pb2
from distillery.demo_model import ensure_demo_model
from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from examples.main_job import create_run, finished, reusable_run, say, upload
from examples.tools import stand_in_teacher

DATASET = home() / "examples" / "stand_in_tool_calls.jsonl"
ROWS, SEED = 240, 7
EVAL_FRACTION = 0.125  # 30 held-out requests
# Rows are 420-550 tokens (the four tools in the system prompt take about 350): 576 keeps them all.
# On CPU a row's activations take about 1.5 GB, so 2 rows at a time, twice per step (4 rows a step).
SFT = pb.SftSettings(max_steps=30, batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-3, lora_r=16,
                     max_seq_length=576)  # fmt: skip
# Gentle, so it cannot undo SFT: a few steps at LoRA's GRPO default rate. A step's completions go in one
# batch, about 1.7 GB each on CPU (2 prompts x 4 needed 14 GB here), so 1 prompt x 4 completions.
GRPO = pb.GrpoSettings(num_generations=4, prompts_per_step=1, max_completion_length=64, beta=0.0,
                       learning_rate=5e-5, max_steps=6)  # fmt: skip
STAGES = ("base", "sft", "grpo")
COLUMNS = [("valid call", "valid_call_rate"), ("right tool", "right_tool_rate"), ("schema valid", "schema_valid_rate"),
           ("args match", "args_match_rate"), ("no call", "no_call_rate"), ("correct", "correct_rate")]  # fmt: skip


def stand_in_dataset(client: Client) -> ingest_pb2.Dataset:
    rows = stand_in_teacher.write(DATASET, ROWS, SEED)
    say(f"{stand_in_teacher.NAME}: {rows} trajectories in {DATASET}")
    return upload(client, DATASET, ingest_pb2.DATASET_KIND_TOOL_CALLS, "tool-calls dataset")


def tools_run(client: Client, dataset_id: str, student: str) -> pb.Run:
    earlier, key = reusable_run(client, f"distill-tools-demo-{dataset_id}-{settings_tag()}-")
    if earlier is not None:
        return earlier
    request = pb.CreateRunRequest(
        path=common_pb2.TRAINING_PATH_DISTILL_TOOLS, mode=common_pb2.TRAINING_MODE_SFT_RL, dataset_id=dataset_id,
        eval_fraction=EVAL_FRACTION, student_model=student, sft=SFT, grpo=GRPO, model_name="tool-caller",
        idempotency_key=key,
    )  # fmt: skip
    run = create_run(client, request)
    say(f"created run {run.id}: LoRA SFT ({SFT.max_steps} steps), then GRPO ({GRPO.max_steps} steps)")
    return run


def settings_tag() -> str:
    """A short hash of the run's settings: a run is reused only while they stay the same."""
    settings = SFT.SerializeToString(deterministic=True) + GRPO.SerializeToString(deterministic=True)
    return hashlib.sha256(settings + str(EVAL_FRACTION).encode()).hexdigest()[:8]


def table(metrics: Mapping[str, float]) -> str:
    """Held-out rates per stage, in percent, and the deltas of SFT and GRPO in points."""
    rows = [f"{'stage':<6}" + "".join(f"{title:>14}" for title, _ in COLUMNS)]
    for stage in STAGES:
        rates = [metrics.get(f"{stage}_{name}") for _, name in COLUMNS]
        rows.append(f"{stage:<6}" + "".join(f"{'-' if r is None else f'{100 * r:.1f}%':>14}" for r in rates))
    for title, before, after in (("SFT", "base", "sft"), ("GRPO", "sft", "grpo")):
        gain = metrics.get(f"{after}_correct_rate", float("nan")) - metrics.get(f"{before}_correct_rate", float("nan"))
        rows.append(f"{title} delta (correct): {100 * gain:+.1f} points")
    return "\n".join(rows)


def main() -> None:
    started = time.monotonic()
    client = Client.from_environment(timeout=60)
    student = str(ensure_demo_model(home() / "models"))
    dataset = stand_in_dataset(client)
    run = tools_run(client, dataset.id, student)
    run = finished(client, run)
    m = run.metrics
    say(f"\nrun {run.id}, model {run.model_id}")
    say(f"held-out requests: {m['eval_prompts']:.0f} ({m['eval_call_prompts']:.0f} wanting a call); "
        f"{m['train_rows']:.0f} training conversations")  # fmt: skip
    say(table(m))
    say(f"GRPO step time: {m['grpo_generation_s_per_step']:.1f} s generating + "
        f"{m['grpo_training_s_per_step']:.1f} s training per step ({m['grpo_steps']:.0f} steps); "
        f"SFT: {m['train_runtime_s'] / max(m['steps'], 1):.1f} s per step ({m['steps']:.0f} steps)")  # fmt: skip
    ask_through_generate(client, run.model_id)
    say(f"\ndone in {time.monotonic() - started:.0f} s.")


def ask_through_generate(client: Client, model_id: str, count: int = 3) -> None:
    """New requests (the stand-in teacher's, another seed, none in the training data) asked through Generate
    as a user asks the registered model: its own tools and decoding. Prints the calls it made."""

    def request(row: dict[str, Any]) -> str:
        return str(next(m["content"] for m in row["messages"] if m["role"] == "user"))

    def wanted_call(row: dict[str, Any]) -> dict[str, Any] | None:
        first = next(m for m in row["messages"] if m["role"] == "assistant")
        return first["tool_calls"][0]["function"] if first.get("tool_calls") else None

    trained = {request(row) for row in stand_in_teacher.trajectories(ROWS, SEED)}
    fresh = [row for row in stand_in_teacher.trajectories(40, SEED + 1) if request(row) not in trained]
    picked = {call["name"]: row for row in fresh if (call := wanted_call(row))}  # one request per tool
    say(f"\n{count} new requests through Generate (`distillery models generate {model_id} TEXT --tools`):")
    for row in list(picked.values())[:count]:
        reply = client.registry.Generate(registry_pb2.GenerateRequest(
            model_id=model_id, model_tools=True, messages=[registry_pb2.ChatMessage(role="user", content=request(row))],
        ), timeout=600)  # fmt: skip
        wanted = wanted_call(row) or {}
        say(f"  {request(row)}")
        for call in reply.message.tool_calls:
            say(f"    call {call.name} {call.arguments_json}")
        for invalid in reply.invalid_tool_calls:
            say(f"    invalid call ({invalid.error}): {invalid.raw[:200]}")
        if reply.message.content:
            say(f"    text: {reply.message.content[:200]}")
        say(f"    (the stand-in teacher called {wanted['name']} {wanted['arguments']})")


if __name__ == "__main__":
    main()
