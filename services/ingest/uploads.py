"""Uploads: what a header promises, and its bytes received into a local work folder.

An upload is one file (pairs, inputs) or a bundle (ASR: a manifest and .wav
files; OCR: a manifest and one image ZIP). Its bytes arrive as one stream, the
bundle's files one after another in the header's order, each chunk naming its
file. They are written to a private work folder (never under a user-given name)
and, every ``part_bytes``, handed to ``stage`` so the service can keep them in
S3: after a dropped connection the client resends only what came after the last
staged part. Large files can instead be PUT to presigned S3 URLs.

Nothing the client says is trusted: names are plain file names, sizes must add
up and stay under the limit, and every file's sha256 is computed from the bytes
and compared with the one declared.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from distillery.ingest.v1 import ingest_pb2
from distillery.uploads import sha256_of
from services.common.errors import InvalidArgument

_UPLOAD_ID = re.compile(r"^up_[a-z0-9]{16,64}$")
_FILENAME = re.compile(r"^[^/\\\x00-\x1f]{1,255}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
BUNDLE_KINDS = (ingest_pb2.DATASET_KIND_ASR, ingest_pb2.DATASET_KIND_OCR)
_KIND_NAMES: dict[int, str] = {
    ingest_pb2.DATASET_KIND_PAIRS: "pairs",
    ingest_pb2.DATASET_KIND_INPUTS: "inputs",
    ingest_pb2.DATASET_KIND_ASR: "asr",
    ingest_pb2.DATASET_KIND_OCR: "ocr",
    ingest_pb2.DATASET_KIND_TOOL_CALLS: "tool_calls",
}


@dataclass(frozen=True)
class FileSpec:
    name: str
    size: int
    sha256: str = ""  # as declared; "" when the client declared none


@dataclass(frozen=True)
class Plan:
    """What an upload carries and how it is to be read, from its header."""

    kind: int
    files: tuple[FileSpec, ...]
    manifest: str = ""  # the bundle's manifest among files; "" for a single file
    display_name: str = ""
    source_format: int = 0
    language: str = ""
    max_clip_seconds: float = 0.0
    context_tokens: int = 0

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def is_bundle(self) -> bool:
        return bool(self.manifest)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "files": [asdict(f) for f in self.files]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(**{**data, "files": tuple(FileSpec(**f) for f in data["files"])})


def kind_name(kind: int) -> str:
    return _KIND_NAMES.get(kind, str(kind))


def new_upload_id() -> str:
    return "up_" + secrets.token_hex(12)


def check_upload_id(upload_id: str) -> str:
    if not _UPLOAD_ID.match(upload_id):
        raise InvalidArgument(
            'upload_id must be "up_" followed by 16-64 lower-case letters or digits', field="header.upload_id"
        )
    return upload_id


def _file_spec(name: str, size: int, sha256: str, field: str) -> FileSpec:
    if not _FILENAME.match(name) or name in (".", ".."):
        raise InvalidArgument("a file name must be a plain name (no folders), 1-255 characters", field=field)
    if size < 0:
        raise InvalidArgument(f"the size of {name!r} cannot be negative", field=field)
    sha256 = sha256.lower()
    if sha256 and not _SHA256.match(sha256):
        raise InvalidArgument(f"the sha256 of {name!r} must be 64 hex digits", field=field)
    return FileSpec(name, size, sha256)


def plan_of(header: Any, limit: int) -> Plan:
    """Check an UploadHeader and return its plan; every problem names its field."""
    kind = header.kind
    if kind not in _KIND_NAMES:
        raise InvalidArgument("kind is required: pairs, inputs, asr, ocr or tool_calls", field="header.kind")
    if kind in BUNDLE_KINDS:
        files, manifest = _bundle_files(header, kind)
    else:
        if header.files:
            raise InvalidArgument(
                f"a {kind_name(kind)} dataset is one file: send filename, size_bytes and sha256, not files",
                field="header.files",
            )
        files = (_file_spec(header.filename, header.size_bytes, header.sha256, "header.filename"),)
        manifest = ""
    plan = Plan(
        kind=kind, files=files, manifest=manifest, display_name=header.display_name or header.filename or manifest,
        source_format=_format(header, kind), language=header.language.strip().lower(),
        max_clip_seconds=header.max_clip_seconds, context_tokens=header.context_tokens,
    )  # fmt: skip
    if plan.total > limit:
        raise InvalidArgument(
            f"the upload is {plan.total} bytes, over the limit of {limit} bytes (DISTILLERY_MAX_UPLOAD_BYTES)",
            field="header.size_bytes",
        )
    if header.max_clip_seconds < 0 or header.context_tokens < 0:
        raise InvalidArgument("max_clip_seconds and context_tokens cannot be negative", field="header")
    return plan


def _format(header: Any, kind: int) -> int:
    """The declared format, else CSV for a .csv name, JSONL for other text kinds, and for bundles
    the format of their main file (WAV for ASR, ZIP for OCR)."""
    if header.format:
        return int(header.format)
    if kind == ingest_pb2.DATASET_KIND_ASR:
        return ingest_pb2.FILE_FORMAT_WAV
    if kind == ingest_pb2.DATASET_KIND_OCR:
        return ingest_pb2.FILE_FORMAT_ZIP
    csv = header.filename.lower().endswith(".csv")
    return ingest_pb2.FILE_FORMAT_CSV if csv else ingest_pb2.FILE_FORMAT_JSONL


def _bundle_files(header: Any, kind: int) -> tuple[tuple[FileSpec, ...], str]:
    what = (
        "a manifest JSONL and the .wav files"
        if kind == ingest_pb2.DATASET_KIND_ASR
        else "a manifest JSONL and the image ZIP"
    )
    if not header.files:
        raise InvalidArgument(f"a {kind_name(kind)} upload is a bundle: list {what} in files", field="header.files")
    files = tuple(_file_spec(f.name, f.size_bytes, f.sha256, f"header.files[{i}]") for i, f in enumerate(header.files))
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise InvalidArgument(
            "two files of the bundle have the same name; give each a unique name", field="header.files"
        )
    manifest = header.manifest
    if not manifest:
        jsonl = [n for n in names if n.lower().endswith(".jsonl")]
        if len(jsonl) != 1:
            raise InvalidArgument("name the bundle's manifest JSONL in manifest", field="header.manifest")
        manifest = jsonl[0]
    if manifest not in names:
        raise InvalidArgument(f"the manifest {manifest!r} is not one of the files", field="header.manifest")
    if kind == ingest_pb2.DATASET_KIND_OCR and len(files) != 2:
        raise InvalidArgument(f"an OCR upload is {what}: two files, not {len(files)}", field="header.files")
    if header.size_bytes and header.size_bytes != sum(f.size for f in files):
        raise InvalidArgument("size_bytes must be the sum of the files' sizes (or 0)", field="header.size_bytes")
    return files, manifest


def local_path(folder: Path, index: int) -> Path:
    """Where file ``index`` of the plan lies in the work folder (never a user-given name)."""
    return folder / f"file-{index:05d}"


class Writer:
    """Writes a stream's bytes, at increasing offsets, into the plan's files in the work folder."""

    def __init__(self, plan: Plan, folder: Path) -> None:
        self.plan = plan
        self.folder = folder
        self.offset = 0
        self.ends = []
        end = 0
        for spec in plan.files:
            end += spec.size
            self.ends.append(end)
        for i in range(len(plan.files)):
            local_path(folder, i).touch()
        self._index = -1
        self._file: IO[bytes] | None = None

    def _current(self) -> int:
        return next(i for i, end in enumerate(self.ends) if end > self.offset)

    def write(self, data: bytes, file: int | None = None) -> None:
        """``file``: the chunk's claim of which file it belongs to (checked); None to skip the check."""
        if not data:
            return
        if self.offset + len(data) > self.plan.total:
            raise InvalidArgument(
                f"received more than the declared {self.plan.total} bytes; size_bytes must be the file's size",
                field="header.size_bytes",
            )
        while data:
            index = self._current()
            if file is not None and file != index:
                raise InvalidArgument(
                    f"a chunk for file {file} arrived while file {index} ({self.plan.files[index].name!r}) had "
                    f"{self.ends[index] - self.offset} bytes to go; send the files whole, in the header's order",
                    field="chunk.file",
                )
            if index != self._index:
                self.close()
                self._file = local_path(self.folder, index).open("r+b")
                self._file.seek(self.plan.files[index].size - (self.ends[index] - self.offset))
                self._index = index
            take = min(len(data), self.ends[index] - self.offset)
            assert self._file is not None
            self._file.write(data[:take])
            self.offset += take
            data = data[take:]
            file = None if data else file  # a chunk may not span files, but restored parts may

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._index = -1


Stage = Callable[[int, bytes], Awaitable[None]]


async def receive(
    chunks: AsyncIterator[tuple[int, bytes]], writer: Writer, *, stage: Stage | None = None, part_bytes: int = 0
) -> None:
    """Write every (file, data) chunk; every ``part_bytes`` call ``stage(offset, part)`` with the bytes
    since the last staged offset, so the caller can keep them durably and acknowledge the offset."""
    part = bytearray()
    part_offset = writer.offset
    try:
        async for file, data in chunks:
            writer.write(data, file)
            if stage is not None:
                part += data
                if len(part) >= part_bytes:
                    await stage(part_offset, bytes(part))
                    part_offset += len(part)
                    part.clear()
    except BaseException as err:
        # A dropped client: keep what arrived, so the resumed stream starts right after it.
        if stage is not None and part and not isinstance(err, InvalidArgument):
            await stage(part_offset, bytes(part))
        raise
    finally:
        writer.close()
    if writer.offset != writer.plan.total:
        if stage is not None and part:
            await stage(part_offset, bytes(part))
        raise InvalidArgument(
            f"received {writer.offset} of the {writer.plan.total} bytes the header declared: the upload was cut "
            "short; resume it from GetUploadStatus's acknowledged_offset, or resend it",
            field="header.size_bytes",
        )


def checked_hashes(plan: Plan, folder: Path) -> tuple[str, ...]:
    """Every file's sha256, from its bytes; a mismatch with the declared one is an error naming the file."""
    actual = []
    for i, spec in enumerate(plan.files):
        got = sha256_of(local_path(folder, i))
        if spec.sha256 and got != spec.sha256:
            raise InvalidArgument(
                f"sha256 mismatch for {spec.name!r}: declared {spec.sha256}, the bytes hash to {got}; "
                "the file changed or was corrupted in transit, resend it",
                field="header.sha256" if not plan.is_bundle else f"header.files[{i}].sha256",
            )
        actual.append(got)
    return tuple(actual)


def content_digest(plan: Plan, hashes: tuple[str, ...]) -> str:
    """What makes two uploads the same dataset version: kind, files (names and bytes) and the options
    that change validation. The same file uploaded again, even under another display name, matches."""
    files = sorted(zip((f.name for f in plan.files), hashes, strict=True)) if plan.is_bundle else [("", hashes[0])]
    options = (plan.kind, plan.source_format, plan.manifest, plan.language, plan.max_clip_seconds, plan.context_tokens)
    return hashlib.sha256(repr((options, files)).encode()).hexdigest()
