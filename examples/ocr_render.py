"""Render short printed text lines with Pillow: (image, exact text) pairs for the OCR demo.

``render(count, out_dir, seed)`` draws ``count`` PNG images of one line each and returns
``(path, text)`` pairs; ``write_dataset(out_dir, count, seed)`` packs them as the OCR
dataset format ingest accepts (one image ZIP plus a manifest JSONL of
``{"image": NAME_IN_ZIP, "text": TEXT}``, see ``services/ingest/ocr.py``):

    from examples.ocr_render import render, write_dataset
    pairs = render(8, "out/lines", seed=0)          # [(Path('out/lines/00000-receipt.png'), '2 x Coffee 4.50'), ...]
    zip_path, manifest = write_dataset("out/ocr", 200, seed=0)

The lines are receipt items (``2 x Coffee 4.50``), totals (``TOTAL 12.40 EUR``), invoice
lines (``INV-2024-0017 Total 129.90 EUR``), ID-like fields (``ID: AB123456``) and dates
(``Date: 2024-03-15``), in Pillow's built-in TrueType font (Aileron) and, where matplotlib
is installed (the ``plot`` extra, which ``make setup`` installs), its DejaVu Sans, Sans Bold,
Sans Mono and Serif, at 18 to 34 px: dark text (gray 0-70) on a light background (gray
220-255, slightly tinted), at a jittered offset. Everything is drawn with Pillow's basic
layout engine, so the same seed gives byte-identical PNGs (and ZIP) on any machine with the
same fonts. File names are ASCII: ``NNNNN-KIND.png``.
"""

from __future__ import annotations

import io
import json
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

KINDS = ("receipt", "total", "invoice", "id", "date")
SIZES = (18, 20, 22, 24, 26, 28, 30, 34)
DEJAVU = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSerif.ttf")
ITEMS = (
    "Coffee", "Tea", "Espresso", "Cappuccino", "Croissant", "Bagel", "Muffin", "Sandwich", "Salad",
    "Soup", "Water", "Orange Juice", "Milk", "Bread", "Apples", "Bananas", "Cheese", "Butter", "Eggs",
    "Pasta", "Rice", "Chocolate", "Cookies", "Yogurt", "Pizza", "Burger", "Fries", "Lemonade",
)  # fmt: skip
CURRENCIES = ("EUR", "USD", "GBP", "CHF")
TOTAL_WORDS = ("TOTAL", "Total", "SUBTOTAL", "Amount due", "VAT 20%", "Cash", "Change")
ID_FIELDS = ("ID", "ID No", "Passport", "Member", "Card", "Customer")
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"


def _font_files() -> list[Path]:
    try:
        import matplotlib
    except ImportError:
        return []
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [folder / name for name in DEJAVU if (folder / name).is_file()]


FontMaker = Callable[[int], ImageFont.FreeTypeFont]


def _maker(source: Path | bytes) -> FontMaker:
    def make(size: int) -> ImageFont.FreeTypeFont:
        font = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        return ImageFont.truetype(font, size, layout_engine=ImageFont.Layout.BASIC)

    return make


def fonts() -> list[tuple[str, FontMaker]]:
    """(name, size -> font) for every font the renderer uses here: Pillow's built-in one first."""
    default = ImageFont.load_default(size=SIZES[0])
    assert isinstance(default, ImageFont.FreeTypeFont)  # Pillow >= 10.1 with FreeType
    return [("Aileron", _maker(default.font_bytes)), *((path.stem, _maker(path)) for path in _font_files())]


def _price(rng: random.Random, low: float, high: float) -> str:
    return f"{rng.uniform(low, high):.2f}"


def line(kind: str, rng: random.Random) -> str:
    """One line of text of a kind in KINDS."""
    if kind == "receipt":
        return f"{rng.randint(1, 4)} x {rng.choice(ITEMS)} {_price(rng, 0.5, 25)}"
    if kind == "total":
        return f"{rng.choice(TOTAL_WORDS)} {_price(rng, 1, 250)} {rng.choice(CURRENCIES)}"
    if kind == "invoice":
        number = f"INV-{rng.randint(2019, 2026)}-{rng.randint(1, 9999):04d}"
        return f"{number} Total {_price(rng, 10, 5000)} {rng.choice(CURRENCIES)}"
    if kind == "id":
        letters = "".join(rng.choice(LETTERS) for _ in range(2))
        return f"{rng.choice(ID_FIELDS)}: {letters}{rng.randint(0, 999999):06d}"
    if kind == "date":
        return f"Date: {rng.randint(2019, 2026)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    raise ValueError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")


def _draw(text: str, font: ImageFont.FreeTypeFont, rng: random.Random) -> Image.Image:
    left, top, right, bottom = (round(v) for v in font.getbbox(text))
    pad_x, pad_y = rng.randint(6, 24), rng.randint(4, 14)
    width = right - left + pad_x + rng.randint(6, 24)
    height = bottom - top + pad_y + rng.randint(4, 14)
    gray = rng.randint(220, 255)
    background = tuple(max(0, min(255, gray + rng.randint(-6, 6))) for _ in range(3))
    ink = rng.randint(0, 70)
    image = Image.new("RGB", (width, height), background)
    ImageDraw.Draw(image).text((pad_x - left, pad_y - top), text, font=font, fill=(ink, ink, ink))
    return image


def _items(count: int, seed: int) -> list[tuple[str, str, Image.Image]]:
    if count < 0:
        raise ValueError("count must be >= 0")
    rng = random.Random(seed)
    faces = fonts()
    out = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)] if i < len(KINDS) else rng.choice(KINDS)
        text = line(kind, rng)
        _, make = faces[rng.randrange(len(faces))]
        image = _draw(text, make(rng.choice(SIZES)), rng)
        out.append((f"{i:05d}-{kind}.png", text, image))
    return out


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def render(count: int, out_dir: str | Path, seed: int = 0) -> list[tuple[Path, str]]:
    """Write ``count`` PNGs into ``out_dir`` (created) and return (path, exact text) pairs, in order."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for name, text, image in _items(count, seed):
        path = folder / name
        path.write_bytes(_png(image))
        pairs.append((path, text))
    return pairs


def write_dataset(out_dir: str | Path, count: int, seed: int = 0, *, prompt: str | None = None) -> tuple[Path, Path]:
    """``out_dir/images.zip`` (the PNGs under ``lines/``) and ``out_dir/manifest.jsonl`` (one
    ``{"image", "text"[, "prompt"]}`` row per image): an OCR dataset as ingest validates it.
    Same seed, same bytes."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    zip_path, manifest_path = folder / "images.zip", folder / "manifest.jsonl"
    rows = []
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, text, image in _items(count, seed):
            info = zipfile.ZipInfo(f"lines/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, _png(image))
            row = {"image": info.filename, "text": text}
            if prompt is not None:
                row["prompt"] = prompt
            rows.append(json.dumps(row, ensure_ascii=False))
    manifest_path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return zip_path, manifest_path


if __name__ == "__main__":
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "ocr-lines"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    for path, text in render(n, target, seed=int(sys.argv[3]) if len(sys.argv) > 3 else 0):
        print(f"{path}\t{text}")
