"""The OCR recipe (recipes/ocr.py, ocr_data.py, ocr_eval.py) and what it shares with the registry
(services/common/ocr_reading.py): images, prompts, resolution modes, labels, normalisation and error rates; and
training jobs on a tiny DeepSeek-OCR 2 (built from a config, tokenizer trained here) over Pillow-rendered receipt
lines, against a real S3 server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont

from services.common import ocr_reading
from services.common.errors import InvalidArgument
from services.common.objects import ObjectStore
from services.common.settings import S3Settings
from services.trainer.recipes import ocr, ocr_data, ocr_eval
from services.trainer.recipes.failures import RunFailure
from services.trainer.recipes.job_spec import JobSpec
from services.trainer.recipes.sft_settings import resolve_sft
from tests.tiny_models import build_tiny_vlm

ROOT = Path(__file__).resolve().parents[1]
LINES = ["2 x Coffee 4.50", "Bagel 3.10", "TOTAL 12.40 EUR", "Tea 1.80", "Muffin 2.75", "Orange Juice 4.20",
         "ID: AB123456", "Date: 2024-03-15"]  # fmt: skip


def render(text: str, width: int = 192, height: int = 32, size: int = 14) -> bytes:
    """A receipt line: dark text on white, as PNG bytes."""
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).text((3, (height - size) // 2), text, fill=(20, 20, 20), font=ImageFont.load_default(size))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny")


@pytest.fixture(scope="module")
def store(s3_settings: S3Settings) -> ObjectStore:
    store = ObjectStore(s3_settings)
    store.ensure_bucket()
    return store


def put_split(
    store: ObjectStore, run_id: str, name: str, lines: list[str], prompts: dict[str, str] | None = None
) -> str:
    """The lines as ingest stores an OCR dataset: one ZIP of PNGs, canonical rows naming its key; the split's key."""
    archive_key = f"tenants/ten_test/datasets/{run_id}-{name}/images.zip"
    buffer, rows = io.BytesIO(), []
    with zipfile.ZipFile(buffer, "w") as archive:
        for n, text in enumerate(lines):
            data, image = render(text), f"lines/{n:03d}.png"
            archive.writestr(image, data)
            rows.append({"image": image, "text": text, "prompt": (prompts or {}).get(text, ""), "width": 192,
                         "height": 32, "format": "png", "archive_key": archive_key,
                         "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
    store.put_bytes(archive_key, buffer.getvalue())
    key = f"tenants/ten_test/splits/{run_id}/{name}.jsonl"
    store.put_bytes(key, ("\n".join(json.dumps(row) for row in rows) + "\n").encode())
    return key


def download(store: ObjectStore, prefix: str, directory: Path) -> set[str]:
    names = {o.object_name for o in store.client.list_objects(store.bucket, prefix=f"{prefix}/", recursive=True)}
    for name in names:
        if name.startswith(f"{prefix}/model/"):
            store.client.fget_object(store.bucket, name, str(directory / name.removeprefix(f"{prefix}/model/")))
    return names


# --- images, prompts, modes (ocr_reading) ---


def test_images_are_rgb_bounded_and_refused_with_a_reason() -> None:
    clear = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    ImageDraw.Draw(clear).rectangle((5, 5, 10, 10), fill=(0, 0, 0, 255))
    buffer = io.BytesIO()
    clear.save(buffer, "PNG")
    image = ocr_reading.load_image(buffer.getvalue())
    assert image.mode == "RGB" and image.size == (40, 20)
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((7, 7)) == (0, 0, 0)  # transparent: white
    with pytest.raises(ValueError, match="not a PNG, JPEG, WebP, BMP or TIFF image"):
        ocr_reading.load_image(b"%PDF-1.7 not an image")
    with pytest.raises(ValueError, match="over 500 pixels"):
        ocr_reading.load_image(buffer.getvalue(), max_pixels=500)  # from the header, before decoding
    with pytest.raises(ValueError, match="does not decode"):
        ocr_reading.load_image(render("cut short")[:200])


def test_prompts_inputs_and_resolution_modes(vlm: Path) -> None:
    from transformers import AutoConfig, AutoProcessor

    processor = AutoProcessor.from_pretrained(vlm)
    assert ocr_reading.default_prompt(AutoConfig.from_pretrained(vlm)) == "<image>\nFree OCR."
    assert ocr_reading.default_prompt({"model_type": "qwen2_vl"}) == ocr_reading.GENERIC_PROMPT
    assert ocr_reading.default_prompt({"decoding": {"prompt": "<image>\nRead it."}}) == "<image>\nRead it."
    line, wide = Image.open(io.BytesIO(render("Tea 1.80"))), Image.open(io.BytesIO(render("Tea", 400, 60)))
    batch = ocr_reading.prompt_inputs(processor, [line, wide], ["Free OCR.", "<image>\nFree OCR."])
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    tokens = (batch["input_ids"] == image_id).sum(1).tolist()
    assert tokens[0] == 145 and tokens[1] > 145  # one 144-query view + separator; the wide one gets tiles
    assert batch["attention_mask"][0, 0] == 0  # padded on the left: the answer starts right after every prompt
    for mode in ("base", "small"):
        one_view = ocr_reading.prompt_inputs(processor, [wide], ["Free OCR."], mode)
        assert (one_view["input_ids"] == image_id).sum() == 145 and "pixel_values_local" not in one_view
    with pytest.raises(InvalidArgument, match="dynamic, base, small") as refused:
        ocr_reading.prompt_inputs(processor, [line], ["Free OCR."], "gundam")
    assert refused.value.field == "image_mode"
    with pytest.raises(RunFailure, match="not one of this model's modes") as failure:
        ocr.check_image_mode(processor, "huge")
    assert (failure.value.code, failure.value.field) == ("invalid_settings", "image_mode")
    assert ocr_reading.max_new_tokens() == 512 and ocr_reading.max_new_tokens(10) == 26
    assert ocr_reading.max_new_tokens(100) == 150


def test_a_chat_template_vlm_reads_in_one_user_turn_and_has_no_modes(tmp_path: Path) -> None:
    """A processor with a chat template (a Llava one here: its PIL image processor needs no torchvision) gets the
    image and the prompt as one user turn and the template's generation prompt; it has no resolution modes."""
    from transformers import AutoTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.llava.processing_llava import LlavaProcessor

    from tests.tiny_models import build_tokenizer

    build_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}{{ '<image>' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
        "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    images = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14, chat_template=template,
                               num_additional_image_tokens=0)  # fmt: skip
    text = ocr_reading.prompt_text(processor, "<image>\nRead the total.")
    assert text == "<|im_start|>user\n<image>Read the total.<|im_end|>\n<|im_start|>assistant\n"
    batch = ocr_reading.prompt_inputs(processor, [Image.new("RGB", (50, 20), "white")], [ocr_reading.GENERIC_PROMPT])
    assert (batch["input_ids"] == tokenizer.convert_tokens_to_ids("<image>")).sum() == 4  # (28 / 14) ** 2
    with pytest.raises(InvalidArgument, match="has no resolution modes"):
        ocr_reading.image_kwargs(processor, "base")


def test_the_original_deepseek_ocr_is_refused_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "deepseek_vl_v2", "architectures": ["DeepseekOCRForCausalLM"],
        "auto_map": {"AutoModel": "modeling_deepseekocr.DeepseekOCRForCausalLM"},
    }))  # fmt: skip
    with pytest.raises(RunFailure, match="DeepSeek-OCR 2") as failure:
        ocr.load_student(str(tmp_path), None)
    assert (failure.value.code, failure.value.field) == ("unknown_model", "student_model")
    with pytest.raises(RunFailure) as missing:
        ocr.load_student(str(tmp_path / "nothing"), None)
    assert missing.value.code == "unknown_model"


def test_a_saved_adapter_loads_back_whole(vlm: Path, tmp_path: Path) -> None:
    """``load_adapter_weights`` puts every LoRA weight back by name (what ``load_trained``, a resume and the
    registry's reading rely on: peft's own loader leaves DeepSeek-OCR 2's language-side weights out)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    def wrapped() -> Any:
        base = AutoModelForImageTextToText.from_pretrained(vlm)
        return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=ocr.lora_targets(base, True)))

    trained = wrapped()
    with torch.no_grad():
        for name, parameter in trained.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    trained.save_pretrained(tmp_path)
    fresh = wrapped()
    ocr_reading.load_adapter_weights(fresh, tmp_path)
    saved = dict(trained.named_parameters())
    lora = [(n, p) for n, p in fresh.named_parameters() if ".lora_" in n]
    assert any(ocr.is_vision(n) for n, _ in lora) and any(".language_model." in n for n, _ in lora)
    assert all(torch.equal(p, saved[n]) for n, p in lora)
    with pytest.raises(ValueError, match="does not fit the model"):
        base = AutoModelForImageTextToText.from_pretrained(vlm)
        ocr_reading.load_adapter_weights(get_peft_model(base, LoraConfig(target_modules=["lm_head"])), tmp_path)


# --- labels, normalisation, error rates ---


def test_labels_are_the_answer_tokens_only(vlm: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(vlm)
    rows = [{"image": "a.png", "text": text, "prompt": prompt, "data": render(text)}
            for text, prompt in (("Tea 1.80", ""), ("TOTAL 12.40 EUR", "<image>\nRead the total."))]  # fmt: skip
    rows.append({"image": "long.png", "text": "word " * 50, "prompt": "", "data": render("long")})
    kept, too_long = ocr_data.with_answers(rows, processor.tokenizer, "<image>\nFree OCR.", limit=30)
    assert too_long == 1 and [r["prompt"] for r in kept] == ["<image>\nFree OCR.", "<image>\nRead the total."]
    batch = ocr_data.Collator(processor)(kept)
    for n, row in enumerate(kept):
        answer = [int(t) for t in batch["labels"][n] if t != -100]
        assert answer == row["answer"] and answer[-1] == processor.tokenizer.eos_token_id
        assert processor.tokenizer.decode(answer, skip_special_tokens=True) == row["text"]
        start = int((batch["labels"][n] != -100).nonzero()[0])
        prompt = ocr_reading.prompt_inputs(processor, [ocr_data.images([row])[0]], [row["prompt"]])
        assert batch["input_ids"][n, :start].tolist() == prompt["input_ids"][0].tolist()  # as reading sees it
    assert batch["pixel_values"].shape == (2, 3, 192, 192) and batch["attention_mask"].sum() < batch["labels"].numel()


def test_normalisation_and_error_rates() -> None:
    assert ocr_eval.normalise("  ＴＯＴＡＬ\t12.40\n EUR ") == "TOTAL 12.40 EUR"  # full-width forms, whitespace
    assert ocr_eval.normalise("ﬁsh") == "fish"
    perfect = ocr_eval.score(["TOTAL 12.40 EUR", "Tea 1.80"], ["TOTAL  12.40\nEUR", "Tea 1.80"])
    assert perfect["cer"] == 0.0 and perfect["wer"] == 0.0 and perfect["exact_match"] == 1.0
    assert perfect["cer_raw"] > 0.0 and perfect["exact_match_raw"] == 0.5
    wrong = ocr_eval.score(["Tea 1.80", "Bagel 3.10"], ["Tea 1.60", ""])
    assert wrong["cer"] == pytest.approx((1 + 10) / (8 + 10)) and wrong["wer"] == pytest.approx(3 / 4)
    assert wrong["exact_match"] == 0.0 and ocr_eval.score([], [])["exact_match"] == 0.0


def test_rows_come_out_of_the_archive_and_changed_images_are_refused(store: ObjectStore, tmp_path: Path) -> None:
    key = put_split(store, "run_ocr_rows", "train", LINES[:3], prompts={"Bagel 3.10": "<image>\nRead the item."})
    rows = ocr_data.read_split(store, key, "train", tmp_path)
    assert [(r["image"], r["text"], r["prompt"]) for r in rows] == [
        ("lines/000.png", LINES[0], ""), ("lines/001.png", LINES[1], "<image>\nRead the item."),
        ("lines/002.png", LINES[2], ""),
    ]  # fmt: skip
    assert rows[1]["data"] == render(LINES[1]) and len(list((tmp_path / "archives").iterdir())) == 1
    changed = [dict(json.loads(line), sha256="0" * 64) for line in store.get_bytes(key).decode().splitlines()]
    store.put_bytes(key, "\n".join(json.dumps(row) for row in changed).encode())
    with pytest.raises(RunFailure, match="not the ones ingest checked") as failure:
        ocr_data.read_split(store, key, "train", tmp_path / "again")
    assert failure.value.code == "invalid_dataset"


# --- the training job ---


@pytest.fixture(scope="module")
def ocr_run(store: ObjectStore, vlm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``ocr.train`` itself (no Ray): a full fine-tune of the tiny DeepSeek-OCR 2's language side (the vision tower
    frozen) on eight rendered receipt lines, evaluated on the same images."""
    run_id = "run_ocr_full"
    prefix = f"tenants/ten_test/runs/{run_id}"
    sft = {"max_steps": 100, "learning_rate": 3e-3, "batch_size": 4, "full_finetune": True, "seed": 1,
           "eval_every_steps": 25, "early_stopping_patience": -1}  # fmt: skip
    spec = JobSpec(
        run_id=run_id, tenant_id="ten_test", student_model=str(vlm), train_key=put_split(store, run_id, "train", LINES),
        eval_key=put_split(store, run_id, "eval", LINES), output_prefix=prefix, sft=resolve_sft(sft),
    )  # fmt: skip
    root = tmp_path_factory.mktemp("ocr-run")
    started = time.monotonic()
    result = ocr.train(spec, store, 0, root / "work")
    elapsed = time.monotonic() - started
    model_dir = root / "trained"
    download(store, prefix, model_dir)
    return {"spec": spec, "result": result, "stored": json.loads(store.get_bytes(f"{prefix}/result.json")),
            "model_dir": model_dir, "seconds": elapsed}  # fmt: skip


def test_training_lowers_the_cer_on_the_training_images(ocr_run: dict[str, Any]) -> None:
    result = ocr_run["stored"]
    metrics = result["metrics"]
    print(f"ocr run: {ocr_run['seconds']:.1f} s; CER {metrics['cer_before']:.3f} -> {metrics['cer_after']:.3f}, "
          f"WER {metrics['wer_before']:.3f} -> {metrics['wer_after']:.3f}, exact match "
          f"{metrics['exact_match_before']:.2f} -> {metrics['exact_match_after']:.2f}")  # fmt: skip
    assert result == ocr_run["result"]
    assert metrics["cer_before"] >= 0.8 and metrics["cer_after"] < 0.5 * metrics["cer_before"]
    assert metrics["wer_after"] < metrics["wer_before"] and metrics["exact_match_after"] > metrics["exact_match_before"]
    assert metrics["cer_raw_after"] >= metrics["cer_after"] - 1e-9
    assert metrics["train_rows"] == 8 and metrics["eval_rows"] == 8 and metrics["steps"] == 100
    assert [e["step"] for e in result["evals"]] == [25, 50, 75, 100]
    losses = [e["values"]["eval_loss"] for e in result["evals"]]
    assert all("eval_cer" in e["values"] for e in result["evals"]) and losses[-1] < 0.5 * losses[0]
    best = min(result["evals"], key=lambda e: (e["values"]["eval_cer"], e["values"]["eval_loss"]))
    assert result["best_step"] == best["step"] and metrics["cer_after"] <= best["values"]["eval_cer"] + 1e-9
    assert result["stop"] == {"reason": "max_steps", "step": 100}
    assert result["artifact_kind"] == "full_weights"
    assert result["artifact_uri"].endswith(f"{ocr_run['spec'].output_prefix}/model/")
    config = result["training_config"]
    assert config["decoding"]["prompt"] == "<image>\nFree OCR." and config["decoding"]["image_mode"] == ""
    assert config["train_vision"] is False and config["model_type"] == "deepseek_ocr2"
    assert [s["text"] for s in config["eval_samples"]] == LINES and all("before" in s for s in config["eval_samples"])


def test_the_saved_model_reads_what_the_run_reported(ocr_run: dict[str, Any]) -> None:
    import torch

    model_dir = ocr_run["model_dir"]
    for name in ("config.json", "model.safetensors", "generation_config.json", "processor_config.json",
                 "tokenizer_config.json", "training_config.json", "eval_readings.json"):  # fmt: skip
        assert (model_dir / name).exists(), name
    model, processor = ocr.load_trained(model_dir, ocr_run["spec"].student_model)
    config = json.loads((model_dir / "training_config.json").read_text())
    base = ocr.load_trained(Path(ocr_run["spec"].student_model), "")[0]
    vision = {n: p for n, p in model.named_parameters() if ocr.is_vision(n)}
    assert vision and all(torch.equal(p, dict(base.named_parameters())[n]) for n, p in vision.items())  # frozen
    rows = json.loads((model_dir / "eval_readings.json").read_text())["rows"]
    images = [ocr_reading.load_image(render(row["text"])) for row in rows]
    budget, mode = config["decoding"]["max_new_tokens"], ocr_reading.recorded_image_mode(config)
    read = ocr_reading.read(model, processor, images, [row["prompt"] for row in rows], budget, mode)
    assert read == [row["reading"] for row in rows]
    one = ocr_reading.read(model, processor, images[:2], [rows[0]["prompt"]] * 2, budget, mode, batch_size=1)
    assert one == read[:2]  # one image at a time (as ReadImage reads) reads the same
    assert ocr_eval.score([row["text"] for row in rows], read)["cer"] == ocr_run["stored"]["metrics"]["cer_after"]


def test_the_ray_job_trains_a_lora_adapter_with_checkpoints(
    store: ObjectStore, s3_settings: S3Settings, vlm: Path, tmp_path: Path
) -> None:
    """``python -m services.trainer.recipes.ocr`` as the pipeline submits it: a one-worker Ray Train job, LoRA on the
    language model's projections (the default; the vision tower frozen), a checkpoint every 2 steps."""
    run_id = "run_ocr_lora"
    prefix = f"tenants/ten_test/runs/{run_id}"
    spec = JobSpec(
        run_id=run_id, tenant_id="ten_test", student_model=str(vlm),
        train_key=put_split(store, run_id, "train", LINES[:4]), eval_key=put_split(store, run_id, "eval", LINES[4:6]),
        output_prefix=prefix, image_mode="small",
        sft=resolve_sft({"max_steps": 4, "learning_rate": 1e-3, "batch_size": 2, "seed": 1, "eval_every_steps": 2,
                         "checkpoint_every_steps": 2}),
    )  # fmt: skip
    store.put_bytes(f"{prefix}/spec.json", spec.to_json().encode(), "application/json")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DISTILLERY_"))}
    env.update({
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        "RAY_JOB_STOP_SIGNAL": "SIGINT",
        "DISTILLERY_S3_ENDPOINT": s3_settings.endpoint, "DISTILLERY_S3_ACCESS_KEY": s3_settings.access_key,
        "DISTILLERY_S3_SECRET_KEY": s3_settings.secret_key, "DISTILLERY_S3_BUCKET": s3_settings.bucket,
        "DISTILLERY_S3_SECURE": "false",
    })  # fmt: skip
    command = [sys.executable, "-m", "services.trainer.recipes.ocr", "--spec-key", f"{prefix}/spec.json"]
    started = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    print(f"ocr ray job: {time.monotonic() - started:.1f} s")

    result = json.loads(store.get_bytes(f"{prefix}/result.json"))
    assert result["artifact_kind"] == "lora_adapter" and result["metrics"]["steps"] == 4
    assert [e["step"] for e in result["evals"]] == [2, 4]
    assert result["training_config"]["decoding"]["image_mode"] == "small"
    model_dir = tmp_path / "trained"
    names = download(store, prefix, model_dir)
    assert any("/ray/" in name and "checkpoint" in name for name in names)  # Ray Train's checkpoints in S3
    assert f"{prefix}/model/adapter_config.json" in names and f"{prefix}/model/model.safetensors" not in names
    adapter = json.loads(store.get_bytes(f"{prefix}/model/adapter_config.json"))
    targets = set(adapter["target_modules"])
    assert targets and all(".language_model." in t and not ocr.is_vision(t) for t in targets)
    from transformers import AutoProcessor

    assert type(AutoProcessor.from_pretrained(model_dir)).__name__ == "DeepseekOcr2Processor"  # beside an adapter
    model, processor = ocr.load_trained(model_dir, str(vlm))
    rows = json.loads((model_dir / "eval_readings.json").read_text())["rows"]
    images = [ocr_reading.load_image(render(row["text"])) for row in rows]
    budget = result["training_config"]["decoding"]["max_new_tokens"]
    read = ocr_reading.read(model, processor, images, [row["prompt"] for row in rows], budget, "small")
    assert read == [row["reading"] for row in rows]


def test_train_vision_trains_the_vision_tower_too(store: ObjectStore, vlm: Path, tmp_path: Path) -> None:
    """``spec.train_vision``: a full fine-tune changes the vision tower's weights as well (the frozen default keeps
    them: ``test_the_saved_model_reads_what_the_run_reported``); LoRA then targets its linear layers too."""
    import torch

    run_id = "run_ocr_vision"
    spec = JobSpec(
        run_id=run_id, tenant_id="ten_test", student_model=str(vlm), train_key=put_split(store, run_id, "train", LINES),
        eval_key=put_split(store, run_id, "eval", LINES[:2]), output_prefix=f"tenants/ten_test/runs/{run_id}",
        train_vision=True, sft=resolve_sft({"max_steps": 2, "learning_rate": 1e-3, "batch_size": 4,
                                            "full_finetune": True, "eval_every_steps": -1}),
    )  # fmt: skip
    result = ocr.train(spec, store, 0, tmp_path / "work")
    assert result is not None and result["training_config"]["train_vision"] is True
    download(store, spec.output_prefix, tmp_path / "trained")
    trained, _ = ocr.load_trained(tmp_path / "trained", str(vlm))
    base = dict(ocr.load_trained(vlm, "")[0].named_parameters())
    changed = {n for n, p in trained.named_parameters() if not torch.equal(p, base[n])}
    assert any(ocr.is_vision(n) for n in changed) and any(".language_model." in n for n in changed)
    targets = ocr.lora_targets(trained, True)
    assert set(targets) - set(ocr.lora_targets(trained, False)) == {t for t in targets if ocr.is_vision(t)} != set()
