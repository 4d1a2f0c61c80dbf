"""ReadImage: runtime testing of a registered OCR model (path TRAINING_PATH_FINETUNE_OCR).

An OCR model's directory holds a Hugging Face image-text-to-text model (``AutoModelForImageTextToText``:
full weights, or a LoRA adapter over ``base_model``, merged) with its processor saved beside it
(``AutoProcessor``: image processor and tokenizer; from the base model if the run saved none), and the
run's ``training_config.json``. It is fetched, cached and kept loaded exactly as ``Generate``'s text
models are (``generate.Generator``); this module decodes the image, loads the model and reads.

- The image: at most ``MAX_IMAGE_BYTES`` of PNG, JPEG, WebP, BMP or TIFF, decoded by
  ``services/common/ocr_reading.load_image``; anything else is INVALID_ARGUMENT naming ``image``.
- The prompt: the request's, or the model's default OCR prompt (``ocr_reading.default_prompt``).
- Reading: greedy, within the token budget the run evaluated with, by ``ocr_reading.read``: the very
  function the OCR recipe's evaluations call, so ReadImage answers what the run reported.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillery.registry.v1 import registry_pb2
from services.common.errors import FailedPrecondition, InvalidArgument

MAX_IMAGE_BYTES = 20 * 1024 * 1024
FORMATS = "PNG, JPEG, WebP, BMP or TIFF"


@dataclass(frozen=True)
class Reader:
    """An OCR model in memory, with what its run recorded about reading (``training_config.json``)."""

    model: Any  # a transformers image-text-to-text model
    processor: Any  # its processor (image processor and tokenizer)
    # The prompt a request without one reads under: the run's (decoding.prompt), else the model type's.
    default_prompt: str
    # The token budget the run's evaluations read within (decoding.max_new_tokens), else ocr_reading's default.
    max_new_tokens: int
    # The resolution mode the run trained and evaluated in (decoding.image_mode; "": the model's default).
    image_mode: str = ""


@dataclass(frozen=True)
class Reading:
    text: str
    prompt: str
    width: int
    height: int
    latency_ms: float


def decode_image(data: bytes) -> Any:
    """The image as a PIL image, or INVALID_ARGUMENT naming ``image`` with why not."""
    from services.common import ocr_reading

    if not data:
        raise InvalidArgument(f"image is empty: give the bytes of a {FORMATS} file", field="image")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidArgument(
            f"image is {len(data)} bytes: give an image of at most {MAX_IMAGE_BYTES // (1024 * 1024)} MiB",
            field="image",
        )
    try:
        return ocr_reading.load_image(data)
    except ValueError as err:
        raise InvalidArgument(f"image cannot be read: {err}", field="image") from None


def load(directory: Path, base_model: str, artifact_kind: int) -> Reader:
    """The OCR model saved in ``directory``: full weights, or a LoRA adapter merged into ``base_model``;
    its processor from the directory (or, if the run saved none, from the base model)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from services.common import ocr_reading

    adapter = artifact_kind == registry_pb2.ARTIFACT_KIND_LORA_ADAPTER or (
        artifact_kind == registry_pb2.ARTIFACT_KIND_UNSPECIFIED and (directory / "adapter_config.json").exists()
    )
    try:
        if adapter:
            model = merge_adapter(AutoModelForImageTextToText.from_pretrained(base_model, dtype="auto"), directory)
        else:
            model = AutoModelForImageTextToText.from_pretrained(directory, dtype="auto")
    except (OSError, ValueError) as err:
        raise FailedPrecondition(f"the OCR model cannot be loaded: {err}", field="base_model") from None
    saved = ("preprocessor_config.json", "processor_config.json")
    has_processor = any((directory / name).is_file() for name in saved)
    try:
        processor = AutoProcessor.from_pretrained(directory if has_processor else base_model)
    except (OSError, ValueError) as err:
        raise FailedPrecondition(f"the OCR model's processor cannot be loaded: {err}", field="base_model") from None
    config_file = directory / "training_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    recorded = config.get("decoding")
    decoding: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    mode = ocr_reading.recorded_image_mode(config)
    try:
        ocr_reading.image_kwargs(processor, mode)
    except InvalidArgument as err:  # the run's record, not the request, is at fault
        raise FailedPrecondition(f"the OCR model's recorded resolution mode: {err}", field="image_mode") from None
    if torch.cuda.is_available():
        model = model.to("cuda")
    # The run's prompt when it recorded one, else the model type's (DeepSeek's "<image>\nFree OCR.").
    prompt = ocr_reading.default_prompt({"decoding": decoding, "model_type": ocr_reading.model_type(model.config)})
    budget = int(decoding.get("max_new_tokens") or 0) or ocr_reading.max_new_tokens()
    return Reader(model.eval(), processor, prompt, budget, mode)


def merge_adapter(base: Any, directory: Path) -> Any:
    """``base`` with the LoRA adapter saved in ``directory`` merged into it, loaded by the names peft saved it with
    (``ocr_reading.merged_with_adapter``: peft's own loader renames DeepSeek-OCR 2's keys and loads nothing); an
    adapter that does not fit its base model is FAILED_PRECONDITION."""
    from services.common import ocr_reading

    try:
        return ocr_reading.merged_with_adapter(base, directory)
    except ValueError as err:
        raise FailedPrecondition(f"the OCR model's adapter does not fit its base model: {err}",
                                 field="base_model") from None  # fmt: skip


def read(reader: Reader, image: Any, prompt: str) -> Reading:
    """The image's text, read greedily under ``prompt`` (or the model's default) as the run's evaluations read."""
    from services.common import ocr_reading

    started = time.perf_counter()
    used = prompt if prompt.strip() else reader.default_prompt
    (text,) = ocr_reading.read(reader.model, reader.processor, [image], [used], reader.max_new_tokens,
                               image_mode=reader.image_mode)  # fmt: skip
    width, height = image.size
    return Reading(text, used, width, height, (time.perf_counter() - started) * 1000)
