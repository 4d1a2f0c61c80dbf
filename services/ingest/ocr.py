"""OCR datasets: a manifest JSONL and one image ZIP, checked against each other.

Each manifest row (field names match case-insensitively):

- ``image`` (required): the file's name inside the ZIP, folders joined by ``/``
  (``pages/p1.png``);
- ``text`` (required, not blank): the target OCR text;
- ``prompt`` (optional): a task prompt.

Images may be JPEG, PNG, WebP, BMP or TIFF (``jpg``, ``jpeg``, ``png``, ``webp``,
``bmp``, ``tif``, ``tiff``), known by decoding them with Pillow, never by their
extension: the header is read first and an image over ``max_pixels`` is refused
before any pixel is decoded; then the whole image is decoded.

A run is blocked, each reported by name, by: ``empty_manifest``,
``missing_field`` / ``alternate_field_name`` / ``wrong_type`` / ``empty_field`` on
a row, ``missing_image`` (a row naming no file in the ZIP), ``unreferenced_file``
(an image no row names), ``non_image_entry`` (a file that is no accepted image;
``nested_archive`` when it is an archive), ``invalid_image`` (an image that does
not decode), ``image_too_large`` (over ``max_pixels``), and every archive rule of
``archives`` (ZIP bombs, unsafe paths, symlinks, encryption...). ``__MACOSX/`` and
``.DS_Store`` entries are skipped with an ``ignored_entry`` warning; folders are fine.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from PIL import Image, UnidentifiedImageError

from services.common.reports import Report
from services.ingest import jsonl
from services.ingest.archives import ArchiveError, ArchiveLimits, SafeZip, entry_key, open_zip

PLUGINS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")  # the only Pillow parsers a file is shown to
FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff"}
EXTENSIONS = "jpg, jpeg, png, webp, bmp, tif or tiff"
ALTERNATES = {
    "file": "image", "filename": "image", "file_name": "image", "path": "image", "image_path": "image",
    "label": "text", "transcription": "text", "ocr": "text", "target": "text", "output": "text",
}  # fmt: skip
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
ARCHIVE_MAGIC = (
    b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00",
    b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07", b"\x28\xb5\x2f\xfd",
)  # fmt: skip
_pixels_lock = threading.Lock()


@dataclass(frozen=True)
class OcrLimits:
    max_entries: int = 100_000
    max_total_bytes: int = 8 * 1024**3  # uncompressed, whole archive
    max_entry_bytes: int = 256 * 1024**2  # uncompressed, one image
    max_ratio: float = 200.0  # uncompressed / compressed, per entry and overall
    max_pixels: int = 100_000_000  # decompression-bomb images
    max_line_bytes: int = jsonl.MAX_LINE_BYTES

    def archive(self) -> ArchiveLimits:
        return ArchiveLimits(self.max_entries, self.max_total_bytes, self.max_entry_bytes, self.max_ratio)


@dataclass(frozen=True)
class _Row:
    line: int
    image: str
    text: str
    prompt: str


class _Refused(Exception):
    def __init__(self, code: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint


def _allow_pixels(max_pixels: int) -> None:
    """Keep Pillow's own bomb check at or above ours, so ours (exact, per call) is the one that speaks."""
    with _pixels_lock:
        if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = max_pixels


_allow_pixels(OcrLimits.max_pixels)


def _string_field(row: dict[str, Any], name: str, line: int, report: Report, required: bool) -> str | None:
    """The row's string ``name``: "" for an absent optional one, None after reporting a problem."""
    value = row.get(name)
    if value is None and not required:
        return ""
    if name not in row:
        alternate = next((a for a, wanted in ALTERNATES.items() if wanted == name and a in row), None)
        if alternate:
            report.add(line, alternate, "alternate_field_name", f"{alternate!r} is not an accepted field name",
                       f"rename {alternate!r} to {name!r}")  # fmt: skip
        else:
            report.add(line, name, "missing_field", f"the row has no {name!r}",
                       f"add {name!r}; each row needs image and text")  # fmt: skip
        return None
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        report.add(line, name, "wrong_type", f"{name!r} must be a string, not {kind}", f"write {name!r} as text")
        return None
    if required and not value.strip():
        report.add(line, name, "empty_field", f"{name!r} is empty", f"give {name!r} some text")
        return None
    return value


def _read_manifest(manifest: IO[bytes], report: Report, max_line_bytes: int) -> list[_Row]:
    rows = []
    for line, obj in jsonl.read_objects(manifest, report, max_line_bytes):
        image = _string_field(obj, "image", line, report, required=True)
        text = _string_field(obj, "text", line, report, required=True)
        prompt = _string_field(obj, "prompt", line, report, required=False)
        if image is not None and text is not None and prompt is not None:
            rows.append(_Row(line, image, text, prompt))
    return rows


def _looks_like_image(head: bytes) -> bool:
    return head.startswith(IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _looks_like_archive(head: bytes) -> bool:
    return head.startswith(ARCHIVE_MAGIC) or head[257:262] == b"ustar"


def _non_image(head: bytes) -> _Refused:
    if _looks_like_archive(head):
        return _Refused("nested_archive", "the entry is an archive inside the ZIP",
                        "put the images themselves in one ZIP, without archives inside")  # fmt: skip
    return _Refused("non_image_entry", "the entry is not an accepted image",
                    f"keep only {EXTENSIONS} images in the ZIP; convert or remove other files")  # fmt: skip


def _too_large(message: str) -> _Refused:
    return _Refused("image_too_large", message, "downscale the image")


def _image(data: bytes, max_pixels: int) -> tuple[int, int, str]:
    """(width, height, format) of a fully decoded image; raises ``_Refused`` with the reason it is not one."""
    try:
        im = Image.open(io.BytesIO(data), formats=PLUGINS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _too_large(f"the image is too large to decode safely ({err})") from None
    except UnidentifiedImageError:
        raise _non_image(data[:512]) from None
    except Exception as err:  # a hostile header can raise anything Pillow's parsers raise
        raise _Refused("invalid_image", f"the image header cannot be read ({err})", "re-export the image") from None
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise _too_large(f"the image is {width}x{height}, over {max_pixels} pixels")
        if not width or not height:
            raise _Refused("invalid_image", "the image has no pixels", "re-export the image")
        if str(im.format) not in FORMATS:
            raise _non_image(data[:512])
        try:
            im.load()
        except Exception as err:  # truncated or corrupt pixel data, in any of five decoders
            raise _Refused("invalid_image", f"the image does not decode ({err})", "re-export the image") from None
        return width, height, FORMATS[str(im.format)]


def _missing_hint(image: str, archive: SafeZip) -> str:
    """How to fix a row naming no file: the near name the ZIP does hold, when there is one."""
    if "\\" in image:
        return "join folders with '/', not '\\'"
    folded = image.casefold()
    base = folded.rsplit("/", 1)[-1]
    near = [n for n in archive.names if n.casefold() == folded] or [
        n for n in archive.names if n.casefold().rsplit("/", 1)[-1] == base
    ]
    if near:
        return f"the ZIP holds {sorted(near)[0]!r}; write the path exactly as it is inside the ZIP"
    return "add the image to the ZIP, or remove the row"


def _check_entries(archive: SafeZip, lines: dict[str, int], max_pixels: int, report: Report) -> dict[str, Any]:
    """Each readable entry checked; returns the decoded images' {key: (name, width, height, format, sha256)}."""
    images: dict[str, Any] = {}
    for info in archive.files:
        key = entry_key(info.filename)
        line, field = (lines[key], "image") if key in lines else (0, "")
        try:
            if key in lines:
                data = archive.read(info)
                images[key] = (info.filename, *_image(data, max_pixels), hashlib.sha256(data).hexdigest())
                continue
            head = archive.head(info)
            if not _looks_like_image(head):
                raise _non_image(head)
            report.add(0, "", "unreferenced_file", "no manifest row names this file",
                       "add a row for it to the manifest, or remove it from the ZIP", entry=info.filename)  # fmt: skip
        except (ArchiveError, _Refused) as err:
            report.add(line, field, err.code, err.message, err.hint, entry=info.filename)
            if isinstance(err, ArchiveError) and err.whole_archive:
                break
    return images


def validate_ocr(
    manifest: IO[bytes], archive: Path, *, limits: OcrLimits = OcrLimits()
) -> tuple[Report, list[dict[str, Any]]]:
    """The report and, one per manifest row in order, {image, text, prompt, width, height, format, sha256} (the
    image bytes' sha256: a split keeps the same image on one side)."""
    report = Report()
    rows = _read_manifest(manifest, report, limits.max_line_bytes)
    if not report.rows:
        report.add(0, "", "empty_manifest", "the manifest has no rows",
                   "write one JSON object per image: {\"image\": ..., \"text\": ...}")  # fmt: skip
    _allow_pixels(limits.max_pixels)
    lines: dict[str, int] = {}
    for row in rows:
        lines.setdefault(entry_key(row.image), row.line)
    opened = open_zip(Path(archive), limits.archive(), report, lines)
    if opened is None:
        return report, []
    with opened as zipped:
        images = _check_entries(zipped, lines, limits.max_pixels, report)
        out = []
        for row in rows:
            key = entry_key(row.image)
            if key not in zipped.names:
                report.add(row.line, "image", "missing_image", f"the ZIP has no file {row.image!r}",
                           _missing_hint(row.image, zipped), entry=row.image)  # fmt: skip
            elif key in images:
                name, width, height, kind, digest = images[key]
                out.append({"image": name, "text": row.text, "prompt": row.prompt, "width": width, "height": height,
                            "format": kind, "sha256": digest})  # fmt: skip
    return report, out


def codes_of(manifest_path: str, archive_path: str, limits: dict[str, Any] | None = None) -> list[str]:
    """Sorted violation and warning codes of one dataset (for the bounded hostile-input tests)."""
    with open(manifest_path, "rb") as manifest:
        report, _ = validate_ocr(manifest, Path(archive_path), limits=OcrLimits(**(limits or {})))
    return sorted({*report.counts, *report.warning_counts})
