"""The OCR demo's rendered text lines (examples/ocr_render.py): deterministic, decodable, and a
dataset that ingest's OCR validation accepts as it is; and its model (distillery/demo_ocr.py).

No package registry ships the weights of a small OCR-capable vision-language model in a
format the installed transformers loads or that converts cleanly, so the demo's model is a
small DeepSeek-OCR 2 built from a config (``build_ocr_model``), once (``ensure_demo_ocr``).
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from examples.ocr_render import KINDS, fonts, line, render, write_dataset
from services.ingest.ocr import validate_ocr

PATTERNS = {
    "receipt": r"[1-4] x [A-Za-z ]+ \d+\.\d\d",
    "total": r"[A-Za-z %0-9]+ \d+\.\d\d (EUR|USD|GBP|CHF)",
    "invoice": r"INV-20\d\d-\d{4} Total \d+\.\d\d (EUR|USD|GBP|CHF)",
    "id": r"[A-Za-z ]+: [A-Z]{2}\d{6}",
    "date": r"Date: 20\d\d-\d\d-\d\d",
}


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_render_is_deterministic_by_seed(tmp_path: Path) -> None:
    first = render(15, tmp_path / "a", seed=7)
    second = render(15, tmp_path / "b", seed=7)
    other = render(15, tmp_path / "c", seed=8)
    assert [(p.name, t) for p, t in first] == [(p.name, t) for p, t in second]
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert [t for _, t in first] != [t for _, t in other]
    assert _digests(tmp_path / "a") != _digests(tmp_path / "c")


def test_rendered_images_decode_and_carry_their_text(tmp_path: Path) -> None:
    pairs = render(40, tmp_path, seed=0)
    assert len(pairs) == 40
    kinds = set()
    for path, text in pairs:
        assert path.parent == tmp_path and path.suffix == ".png" and path.name.isascii()
        kind = path.stem.split("-", 1)[1]
        kinds.add(kind)
        assert re.fullmatch(PATTERNS[kind], text), (kind, text)
        with Image.open(path) as image:
            image.load()
            assert image.format == "PNG" and image.mode == "RGB"
            assert 40 <= image.width <= 900 and 16 <= image.height <= 120
            gray = image.convert("L")
            histogram = gray.histogram()
            low = min(v for v, n in enumerate(histogram) if n)
            high = max(v for v, n in enumerate(histogram) if n)
            assert high >= 200 and low <= 90  # light background, dark text
            assert sum(histogram[:128]) > 20  # some ink, not a blank image
    assert kinds == set(KINDS)
    assert len({t for _, t in pairs}) >= 35


def test_fonts_and_lines() -> None:
    names = [name for name, _ in fonts()]
    assert names[0] == "Aileron"  # Pillow's built-in TrueType font, always there
    for _, make in fonts():
        assert make(24).getbbox("2 x Coffee 4.50")[2] > 60
    import random

    rng = random.Random(0)
    for kind in KINDS:
        assert re.fullmatch(PATTERNS[kind], line(kind, rng))
    with pytest.raises(ValueError, match="unknown kind"):
        line("poem", rng)


def test_dataset_validates_with_ingest(tmp_path: Path) -> None:
    zip_path, manifest_path = write_dataset(tmp_path / "one", 30, seed=3, prompt="Transcribe the text in the image.")
    again, _ = write_dataset(tmp_path / "two", 30, seed=3, prompt="Transcribe the text in the image.")
    assert zip_path.read_bytes() == again.read_bytes()
    rows = [json.loads(r) for r in manifest_path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 30 and all(set(r) == {"image", "text", "prompt"} for r in rows)
    with zipfile.ZipFile(zip_path) as archive:
        assert sorted(archive.namelist()) == sorted(r["image"] for r in rows)
    with manifest_path.open("rb") as manifest:
        report, out = validate_ocr(manifest, zip_path)
    assert report.valid and not report.violations and not report.warnings, report.to_json()
    assert [(o["image"], o["text"], o["format"]) for o in out] == [(r["image"], r["text"], "png") for r in rows]
    plain_zip, plain_manifest = write_dataset(tmp_path / "plain", 5, seed=3)
    assert all(set(json.loads(r)) == {"image", "text"} for r in plain_manifest.read_text().splitlines())
    with plain_manifest.open("rb") as manifest:
        assert validate_ocr(manifest, plain_zip)[0].valid


def test_demo_ocr_builds_once_and_reads_the_renderers_text(tmp_path: Path) -> None:
    import random
    import subprocess
    import sys

    from transformers import AutoProcessor

    from distillery import demo_ocr
    from distillery.demo_files import DONE_MARKER

    built = demo_ocr.ensure_demo_ocr(tmp_path)
    assert built == tmp_path / "deepseek-ocr2-demo" and (built / DONE_MARKER).is_file()
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert demo_ocr.ensure_demo_ocr(tmp_path) == built  # a second call builds nothing
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["deepseek-ocr2-demo"]  # no temporary directory left
    config = json.loads((built / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 128 and config["text_config"]["num_hidden_layers"] == 4
    assert config["vision_config"]["sam_config"]["image_size"] == 384
    tokenizer = AutoProcessor.from_pretrained(built).tokenizer
    for kind in KINDS:  # the renderer's lines tokenize into no more tokens than characters
        text = line(kind, random.Random(1))
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text and len(ids) <= len(text)
    cli = subprocess.run([sys.executable, "-m", "distillery.demo_ocr", str(tmp_path)], capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.strip() == str(built), cli.stderr
    with pytest.raises(ValueError, match="multiple of 48"):
        demo_ocr.build_ocr_model(tmp_path / "odd", image_size=100)
