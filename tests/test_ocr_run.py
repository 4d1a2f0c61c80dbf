"""A finetune-ocr run end to end over the real stack: a tiny DeepSeek-OCR 2 (built from a config, its tokenizer
trained here) fine-tuned on Pillow-rendered receipt lines.

The images are uploaded as an ocr dataset (eight lines, each at two type sizes, and a renamed copy of an eval
image) and an ocr eval dataset (three of the lines at a third size). The run goes through every state; the split
leaves the eval image's copy out of training (by content, whatever its name); the registered model carries its
CER before and after; ``ReadImage`` answers each eval image exactly as the run recorded, so the CER the run
reports is the CER a user gets; and the training images' CER, through ``ReadImage``, falls from the base model's.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_ocr_recipe import LINES, render
from test_services import upload
from test_tracing_and_cli import cli_env
from test_training import EVERY_STATE, ROWS, states, watch

from distillery.cli.main import cli
from distillery.common.v1 import common_pb2
from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from distillery.uploads import Upload, send
from services.common import ocr_reading
from services.common.objects import ObjectStore
from services.trainer.recipes import ocr_eval
from tests.tiny_models import build_tiny_vlm

OCR = common_pb2.TRAINING_PATH_FINETUNE_OCR
LEARN = pb.SftSettings(max_steps=100, learning_rate=3e-3, batch_size=4, full_finetune=True, seed=1,
                       eval_every_steps=50, early_stopping_patience=-1)  # fmt: skip


def ocr_upload(client, folder: Path, images: dict[str, tuple[bytes, str]]) -> ingest_pb2.UploadDatasetResponse:
    """An ocr dataset of ``images``: name in the ZIP -> (PNG bytes, text)."""
    folder.mkdir()
    archive = folder / "images.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, (data, _) in images.items():
            zipped.writestr(name, data)
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"image": name, "text": text}) + "\n" for name, (_, text) in images.items()))
    return send(client.ingest, Upload([manifest, archive], ingest_pb2.DATASET_KIND_OCR, manifest=manifest))


def base_cer(base: Path, images: dict[str, tuple[bytes, str]]) -> float:
    """The base model's CER on ``images``, read as the recipe and ReadImage read (the default prompt)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = AutoModelForImageTextToText.from_pretrained(base), AutoProcessor.from_pretrained(base)
    prompt = ocr_reading.default_prompt(model.config)
    texts = [text for _, text in images.values()]
    budget = ocr_reading.max_new_tokens(max(len(processor.tokenizer(t).input_ids) for t in texts))
    pictures = [ocr_reading.load_image(data) for data, _ in images.values()]
    read = ocr_reading.read(model, processor, pictures, [prompt] * len(pictures), budget)
    return ocr_eval.score(texts, read)["cer"]


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("ocr-run") / "tiny-ocr")


def test_a_finetune_ocr_run_trains_registers_and_reads(services, client_for, make_tenant, tiny_vlm, tmp_path):
    tenant = make_tenant()
    client = client_for(tenant)
    train = {f"lines/{n:02d}.png": (render(text), text) for n, text in enumerate(LINES)}
    train |= {f"lines/{n:02d}-large.png": (render(text, size=15), text) for n, text in enumerate(LINES)}
    evals = {f"eval/{n:02d}.png": (render(text, size=13), text) for n, text in enumerate(LINES[:3])}
    train["kitchen.png"] = evals["eval/01.png"]  # an eval image under another name

    dataset = ocr_upload(client, tmp_path / "train", train)
    assert dataset.dataset.valid, dataset.report
    eval_dataset = ocr_upload(client, tmp_path / "eval", evals)
    request = pb.CreateRunRequest(path=OCR, dataset_id=dataset.dataset.id, eval_dataset_id=eval_dataset.dataset.id,
                                  student_model=str(tiny_vlm), sft=LEARN, model_name="receipts-ocr")  # fmt: skip
    run = client.trainer.CreateRun(request)
    assert run.request.recipe == "ocr"  # the path's recipe, under the settings the request gave

    events = watch(client, run.id, timeout=600)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
    assert states(events) == EVERY_STATE
    notes = [e.log.text for e in events if e.WhichOneof("payload") == "log"]
    assert any("16 train rows, 3 eval rows, 1 train rows dropped as duplicates" in n for n in notes), notes
    assert any("S3 keys scoped to the run" in n for n in notes), notes  # which reach its image ZIP, no other upload
    metrics = done.metrics
    assert metrics["train_rows"] == 16 and metrics["eval_rows"] == 3
    assert [e.step for e in done.evals] == [50, 100]
    print(f"ocr run: CER {metrics['cer_before']:.3f} -> {metrics['cer_after']:.3f}")
    assert metrics["cer_after"] < 0.5 * metrics["cer_before"]

    model = client.registry.GetModel(registry_pb2.GetModelRequest(id=done.model_id))
    assert model.path == OCR and model.name == "receipts-ocr" and model.base_model == str(tiny_vlm)
    assert model.metrics["cer_before"] == metrics["cer_before"] and model.metrics["cer_after"] == metrics["cer_after"]

    # What the run reports is what ReadImage answers: each eval image's reading, and so the CER.
    prefix = model.artifact_uri.removeprefix(f"s3://{services.s3.bucket}/")
    recorded = json.loads(ObjectStore(services.s3).get_bytes(f"{prefix}eval_readings.json"))["rows"]
    assert sorted(row["image"] for row in recorded) == sorted(evals)
    for row in recorded:
        reply = client.registry.ReadImage(registry_pb2.ReadImageRequest(model_id=model.id,
                                                                        image=evals[row["image"]][0]))  # fmt: skip
        assert (reply.text, reply.prompt) == (row["reading"], row["prompt"]), (row, reply)
    reproduced = ocr_eval.score([r["text"] for r in recorded], [r["reading"] for r in recorded])["cer"]
    assert reproduced == pytest.approx(metrics["cer_after"])

    # The training images: ReadImage's CER on them is far below the base model's.
    trained = {name: image for name, image in train.items() if name != "kitchen.png"}
    before = base_cer(tiny_vlm, trained)
    texts = [client.registry.ReadImage(registry_pb2.ReadImageRequest(model_id=model.id, image=data)).text
             for data, _ in trained.values()]  # fmt: skip
    after = ocr_eval.score([text for _, text in trained.values()], texts)["cer"]
    print(f"training images through ReadImage: CER {before:.3f} -> {after:.3f}: {texts}")
    assert before >= 0.8 and after < 0.3 * before

    # The CLI reads too.
    page = tmp_path / "page.png"
    page.write_bytes(train["lines/00.png"][0])
    result = CliRunner().invoke(cli, ["models", "read", model.id, str(page)], env=cli_env(services, tenant.api_key))
    assert result.exit_code == 0 and texts[0] in result.output, result.output


def test_an_ocr_run_on_another_kind_of_dataset_fails_naming_it(services, client_for, make_tenant, tiny_vlm):
    client = client_for(make_tenant())
    pairs = upload(client, ROWS).dataset
    run = client.trainer.CreateRun(pb.CreateRunRequest(path=OCR, dataset_id=pairs.id, student_model=str(tiny_vlm)))
    watch(client, run.id, timeout=60)
    failed = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert (failed.state, failed.error.code, failed.error.field) == (pb.RUN_STATE_FAILED, "invalid_dataset",
                                                                      "dataset_id")  # fmt: skip
    assert "--kind ocr" in failed.error.message, failed.error.message
