"""Uploading datasets: one file or a bundle, resumed after a dropped connection, or
sent through presigned S3 URLs.

``Upload`` describes what goes (the files, the kind, the manifest of a bundle and
its options); ``send`` streams it in 1 MiB chunks with a header of sizes and
sha256s under a client-picked upload id, and after UNAVAILABLE (a dropped
connection, a restarted server) asks ``GetUploadStatus`` how far the service got
and resends only the rest. ``send_presigned`` PUTs each file to its URL, then
registers the upload. ``validate`` streams the same way without storing.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc

from distillery.ingest.v1 import ingest_pb2

CHUNK = 1024 * 1024
FORMATS = {".jsonl": ingest_pb2.FILE_FORMAT_JSONL, ".csv": ingest_pb2.FILE_FORMAT_CSV}
BUNDLE_KINDS = (ingest_pb2.DATASET_KIND_ASR, ingest_pb2.DATASET_KIND_OCR)
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED)

Progress = Callable[[int], None]  # called with the number of bytes the service has so far


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Upload:
    """What to upload. ``files`` is one file, or for ASR/OCR every file of the bundle with the manifest."""

    files: list[Path]
    kind: ingest_pb2.DatasetKind.ValueType
    manifest: Path | None = None
    display_name: str = ""
    language: str = ""
    max_clip_seconds: float = 0.0
    context_tokens: int = 0
    upload_id: str = field(default_factory=lambda: "up_" + secrets.token_hex(12))

    @property
    def total(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def header(self, offset: int = 0) -> ingest_pb2.UploadHeader:
        header = ingest_pb2.UploadHeader(
            kind=self.kind, display_name=self.display_name, upload_id=self.upload_id, offset=offset,
            language=self.language, max_clip_seconds=self.max_clip_seconds, context_tokens=self.context_tokens,
            size_bytes=self.total,
        )  # fmt: skip
        if self.kind in BUNDLE_KINDS:
            if self.manifest is None:
                raise ValueError("an ASR or OCR upload needs its manifest")
            header.manifest = header.filename = self.manifest.name
            for path in self.files:
                header.files.add(name=path.name, size_bytes=path.stat().st_size, sha256=sha256_of(path))
        else:
            [path] = self.files
            header.filename = path.name
            header.format = FORMATS.get(path.suffix.lower(), ingest_pb2.FILE_FORMAT_UNSPECIFIED)
            header.sha256 = sha256_of(path)
        return header


def bundle(kind: ingest_pb2.DatasetKind.ValueType, path: Path, manifest: Path | None) -> tuple[list[Path], Path]:
    """The files of an ASR or OCR upload: ``path`` (an audio file or a folder of them; the image ZIP)
    and the manifest, found in the folder when not named."""
    if path.is_dir():
        inside = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if manifest is None:
            found = [p for p in inside if p.suffix.lower() == ".jsonl"]
            if len(found) != 1:
                raise ValueError(f"name the manifest with --manifest ({len(found)} .jsonl files in {path})")
            manifest = found[0]
        files = [p for p in inside if p.resolve() != manifest.resolve()]
    else:
        if manifest is None:
            raise ValueError("name the manifest JSONL with --manifest")
        files = [path]
    return [manifest, *files], manifest


def requests(upload: Upload, header: ingest_pb2.UploadHeader, on_progress: Progress | None = None) -> Iterator[Any]:
    """The header, then every byte from ``header.offset`` on, each chunk naming its file."""
    yield ingest_pb2.UploadDatasetRequest(header=header)
    start = 0
    for index, path in enumerate(upload.files):
        size = path.stat().st_size
        if start + size > header.offset:
            with path.open("rb") as f:
                f.seek(max(0, header.offset - start))
                position = start + f.tell()
                while block := f.read(CHUNK):
                    position += len(block)
                    if on_progress is not None:
                        on_progress(position)
                    yield ingest_pb2.UploadDatasetRequest(chunk=ingest_pb2.Chunk(data=block, file=index))
        start += size


def send(stub: Any, upload: Upload, *, on_progress: Progress | None = None, attempts: int = 6) -> Any:
    """UploadDataset, resumed from the acknowledged offset after each retryable failure."""
    header = upload.header()
    for attempt in range(attempts):
        try:
            return stub.UploadDataset(requests(upload, header, on_progress))
        except grpc.RpcError as err:
            if err.code() not in RETRYABLE or attempt == attempts - 1:
                raise
        time.sleep(min(2**attempt, 15))
        header.offset = _acknowledged(stub, upload.upload_id)
        if on_progress is not None:
            on_progress(header.offset)
    raise AssertionError("unreachable")


def _acknowledged(stub: Any, upload_id: str) -> int:
    try:
        return int(stub.GetUploadStatus(ingest_pb2.GetUploadStatusRequest(upload_id=upload_id)).acknowledged_offset)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:  # dropped before the service saw the header
            return 0
        raise


def validate(stub: Any, upload: Upload) -> Any:
    header = upload.header()
    header.upload_id = ""
    return stub.ValidateDataset(requests(upload, header))


class _Counting:
    """A file object that reports how much of it has been read (for presigned PUTs)."""

    def __init__(self, f: IO[bytes], done: int, on_progress: Progress | None) -> None:
        self.f, self.done, self.on_progress = f, done, on_progress

    def read(self, n: int = -1) -> bytes:
        block = self.f.read(CHUNK if n < 0 else min(n, CHUNK))
        self.done += len(block)
        if self.on_progress is not None:
            self.on_progress(self.done)
        return block


def send_presigned(stub: Any, upload: Upload, *, on_progress: Progress | None = None, timeout: float = 3600) -> Any:
    """CreateUploadUrl, a PUT of each file to its URL, then RegisterUpload."""
    presigned = stub.CreateUploadUrl(ingest_pb2.CreateUploadUrlRequest(header=upload.header()))
    urls = [f.url for f in presigned.files] or [presigned.url]
    done = 0
    for path, url in zip(upload.files, urls, strict=True):
        size = path.stat().st_size
        with path.open("rb") as f:
            put = urllib.request.Request(
                url, data=_Counting(f, done, on_progress), method="PUT", headers={"Content-Length": str(size)}
            )  # type: ignore[arg-type]
            with urllib.request.urlopen(put, timeout=timeout) as answer:
                answer.read()
        done += size
    return stub.RegisterUpload(ingest_pb2.RegisterUploadRequest(upload_id=presigned.upload_id))
