"""OCR datasets: manifest rules, the ZIP checked against the manifest, and hostile archives and images.

Every input is built here: real text images rendered with Pillow, ZIPs written with
zipfile, and the hostile ones (bombs, lying headers, encrypted and symlink entries)
written byte by byte. Hostile inputs run in a fresh interpreter through
``tests/bounded.py`` and must get their specific code within its time and memory bounds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bounded import run_bounded
from PIL import Image, ImageDraw

from services.ingest.ocr import OcrLimits, codes_of, validate_ocr

MIB = 1024 * 1024
CODES = "services.ingest.ocr:codes_of"


# --- building inputs ------------------------------------------------------------------------------------------


def render(text: str, fmt: str, size: tuple[int, int] = (240, 48)) -> bytes:
    """A real image of ``text`` in Pillow format ``fmt``."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((8, 16), text, fill="black")
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_zip(path: Path, files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def check(tmp_path: Path, rows: list[dict[str, Any]], files: dict[str, bytes], **limits: Any) -> tuple[Any, list]:
    manifest = write_manifest(tmp_path / "manifest.jsonl", rows)
    archive = write_zip(tmp_path / "images.zip", files)
    with manifest.open("rb") as f:
        return validate_ocr(f, archive, limits=OcrLimits(**limits))


def codes(report: Any) -> list[str]:
    return sorted({*report.counts, *report.warning_counts})


@dataclass
class Raw:
    """One entry of a ZIP written byte by byte: ``data`` is stored as is (already compressed)."""

    name: str
    data: bytes
    size: int  # the uncompressed size both headers declare
    crc: int = 0
    method: int = zipfile.ZIP_DEFLATED
    flags: int = 0
    local_flags: int | None = None
    local_method: int | None = None
    external_attr: int = 0
    compress_size: int | None = None  # what the central directory declares; len(data) when None
    header_offset: int | None = None  # where the central directory says the local header is; the real one when None


def raw_zip(path: Path, entries: list[Raw], count: int | None = None) -> Path:
    """A ZIP of ``entries`` (zip64 end records once over 65535 of them); ``count`` overrides the declared count."""
    local, central = bytearray(), bytearray()
    for e in entries:
        name = e.name.encode()
        csize = len(e.data) if e.compress_size is None else e.compress_size
        flags = e.flags if e.local_flags is None else e.local_flags
        central += struct.pack("<4s4B4H3L5H2L", b"PK\x01\x02", 20, 3, 20, 0, e.flags, e.method, 0, 0x21,
                               e.crc, csize, e.size, len(name), 0, 0, 0, 0, e.external_attr,
                               len(local) if e.header_offset is None else e.header_offset)  # fmt: skip
        central += name
        method = e.method if e.local_method is None else e.local_method
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, method, 0, 0x21, e.crc, csize, e.size,
                             len(name), 0)  # fmt: skip
        local += name + e.data
    declared = len(entries) if count is None else count
    end = bytearray()
    if declared > 0xFFFF:
        zip64_at = len(local) + len(central)
        end += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, declared, declared, len(central), len(local))
        end += struct.pack("<4sLQL", b"PK\x06\x07", 0, zip64_at, 1)
        declared = 0xFFFF
    end += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, declared, declared, len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


def deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def deflated_zeros(mib: int) -> bytes:
    """A raw deflate stream of ``mib`` MiB of zeros, built without compressing them all.

    After a full flush the compressor starts afresh, so every MiB compresses to the same bytes."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = packer.compress(bytes(MIB)) + packer.flush(zlib.Z_FULL_FLUSH)
    return block * mib + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR (with a valid CRC) declares ``width`` x ``height`` and whose data is one tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">L", len(body)) + kind + body + struct.pack(">L", zlib.crc32(kind + body))

    ihdr = struct.pack(">2L5B", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def bounded(tmp_path: Path, rows: list[dict[str, Any]], archive: Path, **limits: Any) -> list[str]:
    manifest = write_manifest(tmp_path / "manifest.jsonl", rows)
    result = run_bounded(CODES, str(manifest), str(archive), limits)
    assert result.within_bounds(), (result.seconds, result.extra_mib)
    return list(result.value)


PAGE = render("the quick brown fox", "PNG")
ROW = {"image": "page.png", "text": "the quick brown fox"}


# --- valid datasets ---------------------------------------------------------------------------------------------

FORMATS = [("jpg", "JPEG", "jpeg"), ("jpeg", "JPEG", "jpeg"), ("png", "PNG", "png"), ("webp", "WEBP", "webp"),
           ("bmp", "BMP", "bmp"), ("tif", "TIFF", "tiff"), ("tiff", "TIFF", "tiff")]  # fmt: skip


def test_every_accepted_format_is_decoded_and_described(tmp_path: Path) -> None:
    files = {f"pages/page.{ext}": render(f"invoice {ext}", fmt) for ext, fmt, _ in FORMATS}
    rows = [{"image": name, "text": f"invoice {name}"} for name in files]
    rows[0]["prompt"] = "Transcribe the page."
    report, out = check(tmp_path, rows, {"pages/": b"", **files})
    assert report.valid, report.to_json()
    assert [r["image"] for r in out] == list(files)
    assert [r["format"] for r in out] == [kind for _, _, kind in FORMATS]
    assert all((r["width"], r["height"]) == (240, 48) for r in out)
    assert out[0]["prompt"] == "Transcribe the page." and out[1]["prompt"] == ""
    assert out[2]["text"] == "invoice pages/page.png"
    assert [r["sha256"] for r in out] == [hashlib.sha256(data).hexdigest() for data in files.values()]


def test_format_is_known_by_decoding_not_by_extension(tmp_path: Path) -> None:
    report, out = check(tmp_path, [{"image": "scan.jpg", "text": "x"}], {"scan.jpg": PAGE})
    assert report.valid and out[0]["format"] == "png"


def test_field_names_match_case_insensitively_and_rows_keep_their_order(tmp_path: Path) -> None:
    files = {"b.png": PAGE, "a.png": render("a", "PNG")}
    rows = [{"IMAGE": "b.png", "Text": "b", "Prompt": "p"}, {"Image": "a.png", "TEXT": "a"}]
    report, out = check(tmp_path, rows, files)
    assert report.valid, report.to_json()
    assert [(r["image"], r["text"], r["prompt"]) for r in out] == [("b.png", "b", "p"), ("a.png", "a", "")]


def test_macos_metadata_is_skipped_with_a_warning(tmp_path: Path) -> None:
    files = {"page.png": PAGE, "__MACOSX/._page.png": b"\x00\x05\x16\x07", ".DS_Store": b"Bud1", "x/.DS_Store": b""}
    report, out = check(tmp_path, [ROW], files)
    assert report.valid and len(out) == 1
    assert report.warning_counts == {"ignored_entry": 3}
    assert {w.entry for w in report.warnings} == {"__MACOSX/._page.png", ".DS_Store", "x/.DS_Store"}


def test_a_row_naming_ignored_metadata_is_a_missing_image(tmp_path: Path) -> None:
    report, _ = check(tmp_path, [ROW, {"image": ".DS_Store", "text": "x"}], {"page.png": PAGE, ".DS_Store": b""})
    assert codes(report) == ["ignored_entry", "missing_image"]


NFC, NFD = "caf\u00e9.png", "cafe\u0301.png"


@pytest.mark.parametrize(("written", "stored"), [(NFC, NFD), (NFD, NFC)])
def test_names_match_whichever_unicode_normal_form(tmp_path: Path, written: str, stored: str) -> None:
    report, out = check(tmp_path, [{"image": written, "text": "x"}], {stored: PAGE})
    assert report.valid, report.to_json()
    assert out[0]["image"] == stored


def test_stored_entries_are_read(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "stored.zip", {"page.png": PAGE}, method=zipfile.ZIP_STORED)
    with write_manifest(tmp_path / "m.jsonl", [ROW]).open("rb") as f:
        report, out = validate_ocr(f, archive)
    assert report.valid and out[0]["format"] == "png"


# --- the manifest -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_an_empty_manifest_blocks_the_run(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "m.jsonl").write_bytes(content)
    archive = write_zip(tmp_path / "images.zip", {"page.png": PAGE})
    with (tmp_path / "m.jsonl").open("rb") as f:
        report, out = validate_ocr(f, archive)
    assert "empty_manifest" in report.counts and not report.valid and out == []


@pytest.mark.parametrize(
    ("row", "code", "field"),
    [
        ({"text": "x"}, "missing_field", "image"),
        ({"image": "page.png"}, "missing_field", "text"),
        ({"image": "page.png", "text": "   "}, "empty_field", "text"),
        ({"image": "", "text": "x"}, "empty_field", "image"),
        ({"image": 3, "text": "x"}, "wrong_type", "image"),
        ({"image": "page.png", "text": None}, "wrong_type", "text"),
        ({"image": "page.png", "text": "x", "prompt": ["a"]}, "wrong_type", "prompt"),
        ({"file": "page.png", "text": "x"}, "alternate_field_name", "file"),
        ({"image": "page.png", "transcription": "x"}, "alternate_field_name", "transcription"),
    ],
)
def test_bad_rows_are_reported_by_line_and_field(tmp_path: Path, row: dict, code: str, field: str) -> None:
    report, _ = check(tmp_path, [ROW, row], {"page.png": PAGE})
    bad = [v for v in report.violations if v.code == code]
    assert bad and (bad[0].line, bad[0].field) == (2, field) and bad[0].hint


def test_a_null_prompt_is_no_prompt(tmp_path: Path) -> None:
    report, out = check(tmp_path, [{**ROW, "prompt": None}], {"page.png": PAGE})
    assert report.valid and out[0]["prompt"] == ""


def test_unreadable_manifest_lines_get_the_reader_codes(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_bytes(json.dumps(ROW).encode() + b"\n{not json\n")
    archive = write_zip(tmp_path / "images.zip", {"page.png": PAGE})
    with (tmp_path / "m.jsonl").open("rb") as f:
        report, _ = validate_ocr(f, archive)
    assert report.counts == {"invalid_json": 1} and report.violations[0].line == 2


# --- the ZIP against the manifest -------------------------------------------------------------------------------


def test_a_row_naming_no_file_is_a_missing_image_with_the_near_name(tmp_path: Path) -> None:
    rows = [ROW] + [{"image": name, "text": "x"} for name in ("Page.PNG", "p9.png", "a\\b.png")]
    report, _ = check(tmp_path, rows, {"page.png": PAGE})
    missing = [v for v in report.violations if v.code == "missing_image"]
    assert [(v.line, v.entry) for v in missing] == [(2, "Page.PNG"), (3, "p9.png"), (4, "a\\b.png")]
    assert "'page.png'" in missing[0].hint and "'/'" in missing[2].hint


def test_an_image_no_row_names_is_unreferenced(tmp_path: Path) -> None:
    extra = {f"extra/p.{ext}": render("2", fmt) for ext, fmt, _ in FORMATS}
    report, _ = check(tmp_path, [ROW], {"page.png": PAGE, **extra})
    assert codes(report) == ["unreferenced_file"]
    assert [v.entry for v in report.violations] == list(extra)


@pytest.mark.parametrize("referenced", [True, False])
def test_files_that_are_not_images_are_non_image_entries(tmp_path: Path, referenced: bool) -> None:
    gif = io.BytesIO()
    Image.new("L", (4, 4)).save(gif, "GIF")
    files = {"page.png": PAGE, "notes.png": b"these are my notes, not an image", "anim.png": gif.getvalue()}
    rows = [ROW] + ([{"image": "notes.png", "text": "x"}, {"image": "anim.png", "text": "x"}] if referenced else [])
    report, _ = check(tmp_path, rows, files)
    assert codes(report) == ["non_image_entry"] and report.counts["non_image_entry"] == 2
    if referenced:
        assert [v.line for v in report.violations] == [2, 3]


def test_an_image_that_does_not_decode_is_invalid(tmp_path: Path) -> None:
    big = render("a long line of text " * 4, "PNG", size=(800, 200))
    files = {"page.png": PAGE, "cut.png": big[: len(big) // 2], "cut.jpg": render("x", "JPEG")[:300]}
    rows = [ROW, {"image": "cut.png", "text": "x"}, {"image": "cut.jpg", "text": "x"}]
    report, out = check(tmp_path, rows, files)
    assert codes(report) == ["invalid_image"] and report.counts["invalid_image"] == 2
    assert [r["image"] for r in out] == ["page.png"]


def test_an_image_over_max_pixels_is_too_large(tmp_path: Path) -> None:
    report, _ = check(tmp_path, [ROW], {"page.png": PAGE}, max_pixels=240 * 48 - 1)
    assert codes(report) == ["image_too_large"] and "240x48" in report.violations[0].message


def test_duplicate_entry_names_are_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "dup.zip", "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zf.writestr("page.png", PAGE)
        zf.writestr("page.png", b"not the same file")
    assert bounded(tmp_path, [ROW], tmp_path / "dup.zip") == ["duplicate_entry"]


# --- hostile archives -------------------------------------------------------------------------------------------


def test_a_file_that_is_not_a_zip_is_an_invalid_archive(tmp_path: Path) -> None:
    (tmp_path / "images.zip").write_bytes(PAGE)
    assert bounded(tmp_path, [ROW], tmp_path / "images.zip") == ["invalid_archive"]


def test_a_truncated_zip_is_an_invalid_archive(tmp_path: Path) -> None:
    whole = write_zip(tmp_path / "whole.zip", {"page.png": PAGE}).read_bytes()
    (tmp_path / "cut.zip").write_bytes(whole[: len(whole) - 30])
    assert bounded(tmp_path, [ROW], tmp_path / "cut.zip") == ["invalid_archive"]


def test_corrupt_compressed_data_is_an_invalid_archive(tmp_path: Path) -> None:
    data = bytearray(deflate(PAGE))
    data[len(data) // 2] ^= 0xFF
    archive = raw_zip(tmp_path / "bad.zip", [Raw("page.png", bytes(data), len(PAGE), zlib.crc32(PAGE))])
    assert bounded(tmp_path, [ROW], archive) == ["invalid_archive"]


def test_a_flat_zip_bomb_is_refused_from_its_declared_ratio(tmp_path: Path) -> None:
    bomb = deflated_zeros(2048)  # 2 GiB of zeros in about 2 MB
    archive = raw_zip(tmp_path / "bomb.zip", [Raw("page.png", bomb, 2048 * MIB)])
    assert bounded(tmp_path, [ROW], archive) == ["compression_ratio_too_high"]


def test_a_zip_bomb_written_by_zipfile_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf, zf.open("page.png", "w") as entry:
        for _ in range(64):
            entry.write(bytes(MIB))
    assert bounded(tmp_path, [ROW], tmp_path / "bomb.zip") == ["compression_ratio_too_high"]


def test_a_bomb_whose_headers_lie_about_its_size_is_refused_while_inflating(tmp_path: Path) -> None:
    archive = raw_zip(tmp_path / "liar.zip", [Raw("page.png", deflated_zeros(2048), size=1000)])
    assert bounded(tmp_path, [ROW], archive) == ["compression_ratio_too_high"]


def test_one_bomb_among_honest_images_is_refused_by_its_own_ratio(tmp_path: Path) -> None:
    noise = io.BytesIO()
    Image.frombytes("RGB", (1000, 1000), os.urandom(3_000_000)).save(noise, "PNG")  # 3 MB that does not deflate
    honest = Raw("noise.png", deflate(noise.getvalue()), len(noise.getvalue()), zlib.crc32(noise.getvalue()))
    archive = raw_zip(tmp_path / "mixed.zip", [honest, Raw("page.png", deflated_zeros(512), size=1000)])
    rows = [{"image": "noise.png", "text": "noise"}, ROW]
    assert bounded(tmp_path, rows, archive) == ["compression_ratio_too_high"]


def test_lying_headers_meet_the_size_limits_counted_on_inflated_bytes(tmp_path: Path) -> None:
    noise = os.urandom(2 * MIB)  # incompressible: the ratio stays near 1
    archive = raw_zip(tmp_path / "liar.zip", [Raw("page.png", deflate(noise), size=1000)])
    assert bounded(tmp_path, [ROW], archive, max_entry_bytes=MIB) == ["entry_too_large"]
    assert bounded(tmp_path, [ROW], archive, max_total_bytes=MIB) == ["archive_too_large"]
    zeros = raw_zip(tmp_path / "zeros.zip", [Raw("page.png", deflated_zeros(512), size=1000)])
    assert bounded(tmp_path, [ROW], zeros, max_ratio=1e9, max_entry_bytes=64 * MIB) == ["entry_too_large"]


def test_an_entry_inflating_to_another_size_than_declared_is_a_size_mismatch(tmp_path: Path) -> None:
    archive = raw_zip(tmp_path / "liar.zip", [Raw("page.png", deflate(PAGE), len(PAGE) - 10, zlib.crc32(PAGE))])
    assert bounded(tmp_path, [ROW], archive) == ["size_mismatch"]


def test_a_compressed_size_running_into_the_next_entry_is_an_invalid_archive(tmp_path: Path) -> None:
    page = Raw("page.png", deflate(PAGE), len(PAGE), zlib.crc32(PAGE), compress_size=len(deflate(PAGE)) + 100)
    archive = raw_zip(tmp_path / "overlap.zip", [page, Raw("b.png", deflate(PAGE), len(PAGE), zlib.crc32(PAGE))])
    assert "invalid_archive" in bounded(tmp_path, [ROW, {"image": "b.png", "text": "x"}], archive)


def test_entries_sharing_one_local_header_are_an_invalid_archive(tmp_path: Path) -> None:
    page = Raw("page.png", deflate(PAGE), len(PAGE), zlib.crc32(PAGE))
    archive = raw_zip(tmp_path / "shared.zip", [page, Raw("b.png", page.data, len(PAGE), page.crc, header_offset=0)])
    assert bounded(tmp_path, [ROW, {"image": "b.png", "text": "x"}], archive) == ["invalid_archive"]


def test_an_entry_header_past_the_file_data_is_an_invalid_archive(tmp_path: Path) -> None:
    page = Raw("page.png", deflate(PAGE), len(PAGE), zlib.crc32(PAGE), header_offset=10**6)
    assert bounded(tmp_path, [ROW], raw_zip(tmp_path / "far.zip", [page])) == ["invalid_archive"]


def test_archive_limits_on_declared_sizes(tmp_path: Path) -> None:
    files = {"page.png": PAGE, "b.png": render("b", "PNG")}
    rows = [ROW, {"image": "b.png", "text": "b"}]
    report, _ = check(tmp_path, rows, files, max_entry_bytes=len(PAGE) - 1)
    assert codes(report) == ["entry_too_large"] and report.violations[0].line == 1
    report, _ = check(tmp_path, rows, files, max_total_bytes=len(PAGE) + 10)
    assert codes(report) == ["archive_too_large"]


def test_declared_sizes_over_the_limits_are_refused_before_reading(tmp_path: Path) -> None:
    inflated_by_its_header = Raw("page.png", deflate(PAGE), 900_000, zlib.crc32(PAGE))  # the data is 1 KB
    archive = raw_zip(tmp_path / "claims.zip", [inflated_by_its_header])
    assert bounded(tmp_path, [ROW], archive) == ["size_mismatch"]
    assert bounded(tmp_path, [ROW], archive, max_entry_bytes=500_000) == ["entry_too_large"]
    assert bounded(tmp_path, [ROW], archive, max_total_bytes=500_000) == ["archive_too_large"]


def test_local_and_central_headers_that_disagree_are_an_invalid_archive(tmp_path: Path) -> None:
    entry = Raw("page.png", deflate(PAGE), len(PAGE), zlib.crc32(PAGE), local_method=zipfile.ZIP_STORED)
    assert bounded(tmp_path, [ROW], raw_zip(tmp_path / "two_faced.zip", [entry])) == ["invalid_archive"]


def test_many_small_entries_are_refused_by_the_overall_ratio(tmp_path: Path) -> None:
    blank = render("", "BMP", size=(400, 400))  # 480 KB that deflates about 500 times: each under the floor
    files = {f"blank{i}.bmp": blank for i in range(4)}
    rows = [{"image": name, "text": "nothing"} for name in files]
    report, _ = check(tmp_path, rows, files)
    assert codes(report) == ["compression_ratio_too_high"] and report.violations[0].entry == "blank2.bmp"


def test_a_nested_zip_bomb_is_refused_as_nested_archives(tmp_path: Path) -> None:
    level = raw_zip(tmp_path / "l0.zip", [Raw("zeros.bin", deflated_zeros(1024), 1024 * MIB)]).read_bytes()
    for depth in range(1, 3):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for i in range(10):
                zf.writestr(f"l{depth}_{i}.zip", level)
        level = buffer.getvalue()
    outer = write_zip(tmp_path / "outer.zip", {"page.png": PAGE, "more.zip": level, "bomb.png": level})
    rows = [ROW, {"image": "bomb.png", "text": "x"}]
    assert bounded(tmp_path, rows, outer) == ["nested_archive"]
    report, _ = check(tmp_path, rows, {"page.png": PAGE, "more.zip": level, "bomb.png": level})
    assert {v.entry for v in report.violations} == {"more.zip", "bomb.png"}


@pytest.mark.parametrize("name", ["../evil.png", "/abs.png", "pages/../../evil.png", "C:/evil.png", "a\\evil.png"])
def test_entry_paths_that_escape_are_refused(tmp_path: Path, name: str) -> None:
    archive = raw_zip(tmp_path / "slip.zip", [Raw("page.png", deflate(PAGE), len(PAGE), zlib.crc32(PAGE)),
                                               Raw(name, deflate(PAGE), len(PAGE), zlib.crc32(PAGE))])  # fmt: skip
    assert bounded(tmp_path, [ROW, {"image": name, "text": "x"}], archive) == ["unsafe_path"]


def test_a_zip_slip_written_by_zipfile_is_refused(tmp_path: Path) -> None:
    report, _ = check(tmp_path, [ROW], {"page.png": PAGE, "../evil.png": PAGE})
    assert codes(report) == ["unsafe_path"] and report.violations[0].entry == "../evil.png"


def test_a_symlink_entry_is_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("link.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        zf.writestr("page.png", PAGE)
        zf.writestr(link, "/etc/passwd")
    assert bounded(tmp_path, [ROW, {"image": "link.png", "text": "x"}], tmp_path / "link.zip") == ["symlink_entry"]


@pytest.mark.parametrize(("central", "local"), [(1, None), (0, 1)])
def test_an_encrypted_entry_is_refused_even_when_only_one_header_says_so(
    tmp_path: Path, central: int, local: int | None
) -> None:
    entry = Raw("page.png", deflate(PAGE), len(PAGE), zlib.crc32(PAGE), flags=central, local_flags=local)
    assert bounded(tmp_path, [ROW], raw_zip(tmp_path / "locked.zip", [entry])) == ["encrypted_entry"]


def test_an_unsupported_compression_method_is_refused(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "bz.zip", {"page.png": PAGE}, method=zipfile.ZIP_BZIP2)
    assert bounded(tmp_path, [ROW], archive) == ["unsupported_compression"]


def test_a_100k_by_100k_image_header_is_refused_before_decoding(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "huge.zip", {"page.png": huge_png_header(100_000, 100_000)})
    assert bounded(tmp_path, [ROW], archive) == ["image_too_large"]
    wide = write_zip(tmp_path / "wide.zip", {"page.png": huge_png_header(20_000, 10_000)})
    assert bounded(tmp_path, [ROW], wide, max_pixels=100_000) == ["image_too_large"]


def test_a_non_image_renamed_png_is_refused(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "fake.zip", {"page.png": b"#!/bin/sh\nrm -rf /\n" * 100})
    assert bounded(tmp_path, [ROW], archive) == ["non_image_entry"]


def test_200k_entries_are_refused_from_the_end_record_at_default_limits(tmp_path: Path) -> None:
    archive = raw_zip(tmp_path / "many.zip", [Raw(f"{i}.png", b"", 0, method=0) for i in range(200_000)])
    assert bounded(tmp_path, [ROW], archive) == ["too_many_entries"]
    # the count comes from the end record: a central directory that would not even parse is never reached
    data = bytearray(archive.read_bytes())
    data[data.index(b"PK\x01\x02")] = 0
    archive.write_bytes(bytes(data))
    assert bounded(tmp_path, [ROW], archive) == ["too_many_entries"]


def test_entries_over_a_lower_limit_are_refused_even_when_the_end_record_lies(tmp_path: Path) -> None:
    entries = [Raw(f"{i}.png", b"", 0, method=0) for i in range(1500)]
    honest = raw_zip(tmp_path / "honest.zip", entries)
    assert bounded(tmp_path, [ROW], honest, max_entries=1000) == ["too_many_entries"]
    liar = raw_zip(tmp_path / "liar.zip", entries, count=1000)
    assert bounded(tmp_path, [ROW], liar, max_entries=1000) == ["too_many_entries"]
    tiny_claim = raw_zip(tmp_path / "tiny.zip", entries, count=2)
    assert bounded(tmp_path, [ROW], tiny_claim, max_entries=1000) == ["invalid_archive"]


def test_codes_of_lists_violations_and_warnings(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [ROW, {"image": "gone.png", "text": "x"}])
    archive = write_zip(tmp_path / "images.zip", {"page.png": PAGE, ".DS_Store": b""})
    assert codes_of(str(manifest), str(archive)) == ["ignored_entry", "missing_image"]
