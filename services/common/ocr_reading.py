"""How an OCR model reads an image: what the OCR recipe's evaluations and the registry's ``ReadImage`` share, so
a registered model answers what its run reported.

1. **The image** (``load_image``): PNG, JPEG, WebP, BMP or TIFF bytes decoded with Pillow; the size is read
   from the header first and an image over ``max_pixels`` (``MAX_PIXELS``, 40 megapixels) is refused before
   any pixel is decoded; the EXIF orientation is applied and a transparent background becomes white; RGB.
2. **The prompt** (``default_prompt``): the row's or the request's prompt, else the model's own OCR prompt:
   ``"<image>\\nFree OCR."`` for DeepSeek's models, ``GENERIC_PROMPT`` for chat-template VLMs (Qwen2-VL and the
   like). A run records the one it used in ``training_config.json`` (``decoding.prompt``).
3. **The inputs** (``prompt_inputs``): DeepSeek's models take the prompt as it is (their "plain" format, the
   image token where the prompt puts it, at the start when it has none); a model whose processor has a chat
   template gets one user turn of the image and the prompt, and the template's generation prompt. The batch
   ends where the answer starts: training appends the answer's tokens to it, reading generates them.
4. **The resolution mode** (``image_kwargs``): a model with modes (DeepSeek-OCR 2: ``IMAGE_MODES``) reads in
   the mode its run trained in (``training_config.json``: ``decoding.image_mode``; "" is the model's default);
   a mode the model does not have is an ``InvalidArgument`` naming ``image_mode``.
5. **Reading** (``read``): greedy decoding (no sampling, one beam) of at most ``max_new_tokens`` tokens, the
   new tokens decoded without special tokens and stripped.
6. **The token budget** (``max_new_tokens``): a run allows the longest reference text of its dataset in
   tokens plus half as much again (at least ``MARGIN_TOKENS`` more), and records it in ``training_config.json``
   (``decoding.max_new_tokens``); a model without a record reads up to ``DEFAULT_MAX_NEW_TOKENS``.

transformers and torch are imported when first used: this module is cheap to import.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from services.common.errors import InvalidArgument

MAX_PIXELS = 40_000_000
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
DEEPSEEK_PROMPT = "<image>\nFree OCR."
GENERIC_PROMPT = "Read all the text in this image."
DEFAULT_MAX_NEW_TOKENS = 512
MARGIN_TOKENS = 16
IMAGE_TOKEN = "<image>"
# Resolution modes by model type: what each sets in the processor call (``image_kwargs``).
IMAGE_MODES = {
    "deepseek_ocr2": {
        "dynamic": "the model's own: one global view at the processor's size (1024 px: 256 tokens) and, for an "
        "image larger than a tile, 2 to 6 local tiles (768 px: 144 tokens each)",
        "base": "one global view at the processor's size (1024 px: 256 tokens), no tiles",
        "small": "one view at the tile size (768 px: 144 tokens), no tiles",
    },
}


# --- the image ---


def load_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Any:
    """The image in ``data`` as an RGB ``PIL.Image.Image`` (module docstring, step 1); ValueError saying why
    when it is none, or over ``max_pixels``."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    image: Any
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ValueError(f"not a PNG, JPEG, WebP, BMP or TIFF image ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"the image header cannot be read ({err})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ValueError(f"the image is {width}x{height}, over {max_pixels:,} pixels: downscale it")
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"the image does not decode ({type(err).__name__}: {err})") from None


# --- the prompt and the inputs ---


def model_type(config: Any) -> str:
    """The model type of a transformers config, a config's dict, or a run's ``training_config.json``."""
    if isinstance(config, Mapping):
        return str(config.get("model_type") or "")
    return str(getattr(config, "model_type", "") or "")


def default_prompt(config: Any) -> str:
    """The prompt a model reads with when a row or request gives none: the one its run recorded
    (``training_config.json``'s ``decoding.prompt``), else by its model type (module docstring, step 2)."""
    if isinstance(config, Mapping):
        recorded = (config.get("decoding") or {}).get("prompt")
        if isinstance(recorded, str) and recorded.strip():
            return recorded
    return DEEPSEEK_PROMPT if model_type(config).startswith("deepseek") else GENERIC_PROMPT


def plain_format(processor: Any) -> bool:
    """True where the prompt is given as it is (DeepSeek's models, a processor without a chat template)."""
    return type(processor).__name__.startswith("Deepseek") or not getattr(processor, "chat_template", None)


def image_token(processor: Any) -> str:
    return str(getattr(processor, "image_token", None) or IMAGE_TOKEN)


def prompt_text(processor: Any, prompt: str) -> str:
    """One prompt as the model's text input, up to where the answer starts (module docstring, step 3)."""
    token = image_token(processor)
    if plain_format(processor):
        return prompt if token in prompt else f"{token}\n{prompt}"
    text = prompt.replace(token, "").strip()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def image_kwargs(processor: Any, mode: str) -> dict[str, Any]:
    """What the resolution ``mode`` sets in the processor call ({} for "", the model's default); InvalidArgument
    naming ``image_mode`` for a mode the model does not have."""
    if not mode:
        return {}
    kind = "deepseek_ocr2" if type(processor).__name__.startswith("DeepseekOcr2") else ""
    modes = IMAGE_MODES.get(kind, {})
    if mode not in modes:
        if not modes:
            raise InvalidArgument(
                f"image_mode {mode[:40]!r}: this model ({type(processor).__name__}) has no resolution modes; leave "
                "image_mode empty", field="image_mode",
            )  # fmt: skip
        raise InvalidArgument(f"image_mode {mode[:40]!r} is not one of this model's modes: {', '.join(modes)} (or "
                              "empty for its default)", field="image_mode")  # fmt: skip
    images = processor.image_processor
    size, tile = int(dict(images.size)["height"]), int(images.tile_size)
    settings: dict[str, dict[str, Any]] = {
        "dynamic": {"crop_to_patches": True, "min_patches": 2, "max_patches": 6},
        "base": {"crop_to_patches": False, "tile_size": size},
        "small": {"crop_to_patches": False, "size": {"height": tile, "width": tile}},
    }
    return settings[mode]


def prompt_inputs(processor: Any, images: Sequence[Any], prompts: Sequence[str], image_mode: str = "") -> Any:
    """The processor's batch (tensors) of one image and one prompt a row, padded on the left, ending where the
    answer starts."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images and {len(prompts)} prompts: give one prompt an image")
    texts = [prompt_text(processor, prompt) for prompt in prompts]
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return processor(images=list(images), text=texts, padding=True, return_tensors="pt",
                         **image_kwargs(processor, image_mode))  # fmt: skip
    finally:
        tokenizer.padding_side = side


# --- reading ---


def read(
    model: Any, processor: Any, images: Sequence[Any], prompts: Sequence[str], max_new_tokens: int,
    image_mode: str = "", batch_size: int = 8,
) -> list[str]:  # fmt: skip
    """The text the model reads in each image under its prompt (module docstring, step 5), in order."""
    import torch

    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    parameter = next(model.parameters())
    texts: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = prompt_inputs(processor, images[start : start + batch_size],
                                      prompts[start : start + batch_size], image_mode)  # fmt: skip
                inputs = {k: on_device(v, parameter) for k, v in batch.items()}
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                     pad_token_id=pad)  # fmt: skip
                sequences = out.sequences if hasattr(out, "sequences") else out
                new = sequences[:, inputs["input_ids"].shape[1] :]
                texts += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        model.train(was_training)
    return texts


def on_device(value: Any, parameter: Any) -> Any:
    """A batch tensor on the model's device; floating-point ones (pixels) in its dtype."""
    if not hasattr(value, "to"):
        return value
    if value.is_floating_point():
        return value.to(parameter.device, parameter.dtype)
    return value.to(parameter.device)


def max_new_tokens(longest_reference_tokens: int | None = None) -> int:
    """The most tokens one reading may have (module docstring, step 6): a run's budget from the longest reference
    text it has (in tokens), or ``DEFAULT_MAX_NEW_TOKENS`` for a model without a record (None)."""
    if longest_reference_tokens is None:
        return DEFAULT_MAX_NEW_TOKENS
    longest = max(1, int(longest_reference_tokens))
    return longest + max(MARGIN_TOKENS, longest // 2)


def recorded_image_mode(training_config: Mapping[str, Any] | None) -> str:
    """The resolution mode a run trained and evaluated in (``decoding.image_mode``; "" for the default)."""
    mode = ((training_config or {}).get("decoding") or {}).get("image_mode")
    return mode if isinstance(mode, str) else ""


# --- a LoRA adapter, loaded by name ---


def load_adapter_weights(model: Any, directory: Any) -> None:
    """Put a saved LoRA adapter's weights (``adapter_model.safetensors`` in ``directory``) into ``model``, a peft
    model wrapped with the same adapter config, by name. peft's own loader (``PeftModel.from_pretrained``,
    ``load_adapter``, a Trainer resuming) renames keys by transformers' checkpoint conversion first, and for
    DeepSeek-OCR 2 that conversion turns ``language_model.layers.`` into ``language_language_model.layers.``:
    every language-side weight is then silently left out (transformers 5.23, peft 0.21). ValueError when a
    saved weight has no place in ``model`` or a LoRA weight of ``model`` none in the file."""
    import re
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    saved = load_file(str(Path(directory) / "adapter_model.safetensors"))
    params = dict(model.named_parameters())
    names = {re.sub(r"\.(lora_[AB])\.(weight|bias)$", r".\1.default.\2", key): key for key in saved}
    lora = {name for name in params if ".lora_" in name}
    if set(names) - set(params) or lora - set(names):
        left = sorted((set(names) - set(params)) | (lora - set(names)))
        raise ValueError(f"the adapter in {directory} does not fit the model: {', '.join(left[:3])}")
    with torch.no_grad():
        for name, key in names.items():
            params[name].copy_(saved[key].to(params[name].device, params[name].dtype))


def merged_with_adapter(base: Any, directory: Any) -> Any:
    """``base`` with the LoRA adapter saved in ``directory`` merged into it (``load_adapter_weights``)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base, LoraConfig.from_pretrained(str(directory)))
    load_adapter_weights(model, directory)
    return model.merge_and_unload()
