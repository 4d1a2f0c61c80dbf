"""The job of `make finetune-ocr`, on a running local stack: teach a small DeepSeek-OCR 2 to read printed text
lines, end to end through the services.

No package registry ships the weights of a real OCR-capable vision-language model that can be had here, so the
student is a small DeepSeek-OCR 2 built from its config with random weights (``distillery/demo_ocr.py``: the OCR
path's default architecture, about 0.9M parameters), which learns to read from scratch. Its readings before
training are noise; what the demo shows is the whole path (upload, split, training, CER evals, registration,
``ReadImage``) and the held-out CER falling as it learns (measured: 4.554 -> 0.712 on 40 held-out lines in
about 6 minutes on 2 CPU cores). Plainly: in that time it learns what the lines look like as text, a well-formed
line instead of noise, and tells some kinds of line apart, but reads no line exactly yet. A real model
(``deepseek-community/DeepSeek-OCR-2`` where a hub can be reached) goes through the same run.

1. builds the demo model once, into ``$DISTILLERY_HOME/models/deepseek-ocr2-demo``;
2. renders ``LINES`` printed receipt, total, invoice, ID and date lines with Pillow
   (``examples/ocr_render.py``, a fixed seed: the same bytes each time, so a second upload is reused) into
   ``$DISTILLERY_HOME/demo-ocr`` and uploads them as an ocr dataset (the image ZIP and its manifest);
3. starts a finetune-ocr run: a full fine-tune of the language side, the vision tower left frozen at its random
   weights (initialised wide: its features tell images apart; trained too, it collapsed to one reading for every
   line in as many steps), each line read in one 384 px view (``image_mode`` "base", no tiles: a CPU's budget);
4. follows it and prints the CER before -> after on the held-out images (WER and exact match too), the evals,
   a few held-out readings before and after, then one image read through the registry's ``ReadImage``.

Running it again reuses the finished run and its model (a run still going is followed);
`distillery models delete ID` and a new `make finetune-ocr` train afresh.
"""

from __future__ import annotations

import time
from pathlib import Path

from google.protobuf import json_format

from distillery.cli.run_plots import eval_line
from distillery.client import Client, home
from distillery.common.v1 import common_pb2
from distillery.demo_ocr import ensure_demo_ocr
from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from examples.main_job import create_run, finished, reusable_run, say, upload
from examples.ocr_render import render, write_dataset

LINES, SEED = 400, 0
# A full fine-tune from random weights: a high learning rate, a thousand steps of 8 lines each, about 0.35 s a step
# on 2 CPU cores (no gradient accumulation: the recipe would size it from the split, 8 times the work per step).
SFT = pb.SftSettings(full_finetune=True, learning_rate=2e-3, batch_size=8, gradient_accumulation_steps=1,
                     max_steps=1000, eval_every_steps=200, early_stopping_patience=-1, seed=1)  # fmt: skip
EVAL_FRACTION = 0.1
IMAGE_MODE = "base"


def ocr_run(client: Client, dataset_id: str, student: str) -> pb.Run:
    earlier, key = reusable_run(client, f"demo-ocr-{dataset_id}-")
    if earlier is not None:
        return earlier
    request = pb.CreateRunRequest(
        path=common_pb2.TRAINING_PATH_FINETUNE_OCR, dataset_id=dataset_id, student_model=student, sft=SFT,
        eval_fraction=EVAL_FRACTION, train_vision=False, image_mode=IMAGE_MODE, model_name="receipt-lines-ocr",
        idempotency_key=key,
    )  # fmt: skip
    run = create_run(client, request)
    say(f"created run {run.id}: finetune-ocr (recipe {run.request.recipe}), a full fine-tune of {Path(student).name}"
        f" (vision tower frozen), {SFT.max_steps} steps of {SFT.batch_size} lines")  # fmt: skip
    return run


def main() -> None:
    started = time.monotonic()
    client = Client.from_environment(timeout=60)
    say("No package registry ships real OCR-capable vision-language weights usable here, so the student is a small "
        "DeepSeek-OCR 2 built from its config (random weights) that learns to read from scratch.")  # fmt: skip
    student = str(ensure_demo_ocr(home() / "models"))
    say(f"student model: {student}")
    zip_path, manifest = write_dataset(home() / "demo-ocr", LINES, seed=SEED)
    say(f"rendered {LINES} printed text lines (seed {SEED}) into {zip_path.parent}")
    dataset = upload(client, manifest, ingest_pb2.DATASET_KIND_OCR, "ocr dataset", [zip_path])
    run = finished(client, ocr_run(client, dataset.id, student))

    metrics = run.metrics
    say(f"\nmodel id:  {run.model_id}")
    say(f"CER:       {metrics['cer_before']:.3f} before training -> {metrics['cer_after']:.3f} after, on "
        f"{metrics['eval_rows']:.0f} held-out images (WER {metrics['wer_before']:.3f} -> {metrics['wer_after']:.3f}; "
        f"exact match {metrics['exact_match_before']:.3f} -> {metrics['exact_match_after']:.3f})")  # fmt: skip
    for line in eval_line(run).splitlines():
        say(f"           {line}")
    model = client.registry.GetModel(registry_pb2.GetModelRequest(id=run.model_id))
    samples = json_format.MessageToDict(model.training_config).get("eval_samples", [])
    say("\nheld-out images, read before and after training:")
    for sample in samples[:5]:
        say(f"\n  image:   {sample['image']}\n  text:    {sample['text']!r}\n"
            f"  before:  {sample['before']!r}\n  after:   {sample['after']!r}")  # fmt: skip
    page, text = render(1, home() / "demo-ocr" / "page", seed=SEED + 1)[0]  # a line no run has seen
    reply = client.registry.ReadImage(registry_pb2.ReadImageRequest(model_id=run.model_id, image=page.read_bytes()),
                                      timeout=300)  # fmt: skip
    say(f"\nReadImage {page.name} ({reply.width}x{reply.height}, a new line): {reply.text!r} for {text!r} "
        f"({reply.latency_ms:.0f} ms)")  # fmt: skip
    say(f"\ndone in {time.monotonic() - started:.0f} s.")
    say(f"Try: distillery models read {run.model_id} {page}")
    say("Stop the stack with `distillery down` (data stays in $DISTILLERY_HOME, default ~/.distillery).")


if __name__ == "__main__":
    main()
