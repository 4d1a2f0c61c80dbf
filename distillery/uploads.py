"""The request stream of an upload (UploadDataset, ValidateDataset): a header with the
file's size and sha256, then the file in 1 MiB chunks, read as they are sent."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

from distillery.ingest.v1 import ingest_pb2

CHUNK = 1024 * 1024
FORMATS = {".jsonl": ingest_pb2.FILE_FORMAT_JSONL, ".csv": ingest_pb2.FILE_FORMAT_CSV}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def upload_requests(
    path: Path,
    kind: ingest_pb2.DatasetKind.ValueType,
    display_name: str = "",
    on_chunk: Callable[[int], None] | None = None,
) -> Iterator[ingest_pb2.UploadDatasetRequest]:
    """``on_chunk(bytes)`` is called as each chunk goes (for a progress bar)."""
    header = ingest_pb2.UploadHeader(
        filename=path.name, kind=kind, format=FORMATS.get(path.suffix.lower(), ingest_pb2.FILE_FORMAT_UNSPECIFIED),
        size_bytes=path.stat().st_size, sha256=sha256_of(path), display_name=display_name,
    )  # fmt: skip
    yield ingest_pb2.UploadDatasetRequest(header=header)
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            if on_chunk is not None:
                on_chunk(len(block))
            yield ingest_pb2.UploadDatasetRequest(chunk=ingest_pb2.Chunk(data=block))
