"""Distillation - Text Generation on the local stack, with no outside key (`make distill`).

The teacher is the stack's platform teacher (SmolLM2-135M-Instruct served by llama.cpp's
server as `platform:smollm2`); the student is the same model converted for training.

1. uploads `examples/support_inputs.jsonl` (100 support messages, inputs only);
2. prints the teacher's estimate, then starts a distill-text run with two named system
   prompts: the teacher answers every input under each (100 x 2 = 200 pairs), the run
   shows generation progress (rows, tokens, cost), then trains the student with LoRA;
3. prints the teacher's usage, the rows it skipped, and the trained model's answers
   under each prompt.

Running it again reuses the finished run (a run still going is followed).
"""

from __future__ import annotations

import time
from pathlib import Path

from distillery.client import Client, home
from distillery.common.v1 import common_pb2
from distillery.demo_model import ensure_demo_model
from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2
from distillery.teacher.v1 import teacher_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from examples.main_job import create_run, finished, reusable_run, say, upload

DATASET = Path(__file__).parent / "support_inputs.jsonl"
TEACHER = "platform:smollm2"
PROMPTS = [
    teacher_pb2.NamedSystemPrompt(
        name="reply", text="You are a support agent. Reply to the customer in one or two short sentences."
    ),
    teacher_pb2.NamedSystemPrompt(name="summary", text="Summarize the customer's message in one short sentence."),
]
# SmolLM2-135M sometimes rambles past the cap; such answers are skipped (answer_truncated), and up to
# 10% of skipped rows still train on the rest.
GENERATION = teacher_pb2.GenerationParameters(max_output_tokens=200)
MAX_FAILED_FRACTION = 0.1
SFT = pb.SftSettings(max_steps=40, batch_size=4, learning_rate=1e-3, lora_r=16, max_seq_length=256)
SAMPLE = "I was charged twice for my annual plan this morning, please refund one of them."


def distill_run(client: Client, dataset_id: str, student: str) -> pb.Run:
    earlier, key = reusable_run(client, f"distill-demo-{dataset_id}-")
    if earlier is not None:
        return earlier
    estimate = client.teacher.EstimateJob(teacher_pb2.CreateGenerationJobRequest(
        kind=teacher_pb2.JOB_KIND_TEXT_DISTILLATION, teacher=TEACHER, dataset_id=dataset_id, system_prompts=PROMPTS,
        parameters=GENERATION,
    ))  # fmt: skip
    say(f"estimate: {estimate.rows} rows, about {estimate.input_tokens:,} input and {estimate.output_tokens:,} "
        f"output tokens, ${estimate.estimated_cost_usd:.4f} (the platform's own model)")  # fmt: skip
    request = pb.CreateRunRequest(
        path=common_pb2.TRAINING_PATH_DISTILL_TEXT, dataset_id=dataset_id, student_model=student, teacher=TEACHER,
        system_prompts=PROMPTS, generation=GENERATION, sft=SFT, model_name="support-distilled",
        max_failed_fraction=MAX_FAILED_FRACTION,
        idempotency_key=key,
    )  # fmt: skip
    run = create_run(client, request)
    say(f"created run {run.id}: {TEACHER} answers every input under {len(PROMPTS)} prompts, then LoRA SFT")
    return run


def main() -> None:
    started = time.monotonic()
    client = Client.from_environment(timeout=60)
    student = str(ensure_demo_model(home() / "models"))
    dataset = upload(client, DATASET, ingest_pb2.DATASET_KIND_INPUTS, "input-only dataset")
    run = distill_run(client, dataset.id, student)
    run = finished(client, run)
    usage = run.teacher_usage
    pairs, skipped = run.metrics["teacher_rows"], run.metrics["teacher_rows_failed"]
    say(f"\nteacher: {usage.requests} requests, {usage.input_tokens:,} input and {usage.output_tokens:,} output "
        f"tokens; {pairs:.0f} pairs, {skipped:.0f} rows skipped")  # fmt: skip
    say(f"model id:  {run.model_id}")
    say(f"eval loss: {run.metrics['eval_loss_before']:.4f} before training -> {run.metrics['eval_loss_after']:.4f}")
    for prompt in PROMPTS:
        messages = [registry_pb2.ChatMessage(role="system", content=prompt.text),
                    registry_pb2.ChatMessage(role="user", content=SAMPLE)]  # fmt: skip
        reply = client.registry.Generate(
            registry_pb2.GenerateRequest(model_id=run.model_id, messages=messages, max_new_tokens=40), timeout=300
        )
        say(f"\n  {prompt.name}: {SAMPLE}\n  trained: {reply.message.content.strip()[:200]!r}")
    say(f"\ndone in {time.monotonic() - started:.0f} s.")


if __name__ == "__main__":
    main()
