"""Exports: the weights a tenant owns, as files it downloads (``ExportModel``, ``ReadExportFile``).

Formats: "adapter" (the LoRA adapter as trained, with its tokenizer and chat template), "merged" (full
weights with the adapter merged, ``merge_and_unload``; a full fine-tune's weights as they are) and "gguf"
(llama.cpp's converter run on the merged weights, ``gguf_export.py``). Every export has the model card
as ``README.md`` (``model_card.py``).

An export is built once and kept in S3 under ``tenants/<t>/exports/<model>/<format>/``: the files go
under a fresh build id, and ``manifest.json`` (each file's path, size and sha256, and the build id) is
written last, so a half-built export is never served; a later call reads the manifest and reuses it.
Building runs in a worker thread, one build per model and format at a time in this process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Generator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from minio.error import S3Error

from distillery.registry.v1 import registry_pb2
from services.common import served_models
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.objects import ObjectStore, tenant_key
from services.registry import gguf_export, model_card
from services.registry.generate import artifact_prefix, is_ocr, is_speech
from services.registry.models import Model

FORMATS = ("adapter", "merged", "gguf")
# How long an export's presigned URLs stay valid.
URL_TTL_S = 6 * 3600
CHUNK_BYTES = 1024 * 1024
# What an export never carries over from the artifacts: a pickle of the trainer's arguments, checkpoints.
LEFT_OUT = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth")


@dataclass(frozen=True)
class ExportedFile:
    path: str  # relative to the export's root
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class Export:
    files: list[ExportedFile]
    urls: dict[str, str]
    expires_at: datetime


def exports_prefix(tenant_id: str, model_id: str) -> str:
    """Where every export of a model lives (deleted with the model)."""
    return tenant_key(tenant_id, "exports", model_id) + "/"


def check_format(export_format: str) -> str:
    if export_format not in FORMATS:
        raise InvalidArgument(f"format is {export_format[:40]!r}: use one of {', '.join(FORMATS)}", field="format")
    return export_format


def check_path(path: str) -> PurePosixPath:
    """An export file's relative path; absolute paths and ".." are INVALID_ARGUMENT naming ``path``."""
    relative = PurePosixPath(path)
    if not path or relative.is_absolute() or any(part in ("", ".", "..") for part in path.split("/")):
        raise InvalidArgument(
            f"path {path[:200]!r} is not a file of the export: give one of the paths ExportModel listed",
            field="path",
        )
    return relative


class Exporter:
    """Builds exports into S3 and reads them back."""

    def __init__(
        self, store: ObjectStore, work_dir: Path, converter: Path | None = None,
        convert_timeout_s: float = gguf_export.TIMEOUT_S,
    ) -> None:  # fmt: skip
        """``work_dir``: where exports are built (then uploaded and removed); ``converter``: llama.cpp's
        convert_hf_to_gguf.py (None: where ``make setup`` puts it, ``gguf_export.default_converter``)."""
        self.store = store
        self.work_dir = work_dir.expanduser()
        self.converter = converter or gguf_export.default_converter()
        self.convert_timeout_s = convert_timeout_s
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def export(self, model: Model, export_format: str) -> Export:
        """The model's export in ``export_format``, built the first time; with presigned URLs."""
        check_format(export_format)
        prefix = self._prefix(model, export_format)
        async with self._locks.setdefault((model.id, export_format), asyncio.Lock()):
            manifest = await asyncio.to_thread(self._manifest, prefix)
            if manifest is None:
                manifest = await asyncio.to_thread(self._build, model, export_format, prefix)
        files = [ExportedFile(**f) for f in manifest["files"]]
        build = prefix + manifest["build"] + "/"
        expires = datetime.now(UTC) + timedelta(seconds=URL_TTL_S)
        urls = {f.path: self.store.presigned_get(build + f.path, URL_TTL_S) for f in files}
        return Export(files, urls, expires)

    async def read(
        self, model: Model, export_format: str, path: str, offset: int
    ) -> AsyncIterator[tuple[bytes, int, int]]:
        """(data, offset of data, file size) chunks of one built export file from ``offset``."""
        check_format(export_format)
        check_path(path)
        prefix = self._prefix(model, export_format)
        manifest = await asyncio.to_thread(self._manifest, prefix)
        if manifest is None:
            raise FailedPrecondition(
                f"model {model.id} has no {export_format} export yet: build it with ExportModel "
                f"(`distillery models export {model.id} --format {export_format} --out DIR`)",
                field="format",
            )
        sizes = {f["path"]: int(f["size_bytes"]) for f in manifest["files"]}
        if path not in sizes:
            raise InvalidArgument(
                f"path {path[:200]!r} is not a file of the export: give one of {', '.join(sorted(sizes))}",
                field="path",
            )
        size = sizes[path]
        if not 0 <= offset <= size:
            raise InvalidArgument(f"offset {offset} is outside {path} (0 to {size} bytes)", field="offset")
        if offset == size:
            yield b"", offset, size
            return
        chunks: Generator[bytes] = self.store.chunks(prefix + manifest["build"] + "/" + path, offset, CHUNK_BYTES)
        try:
            while data := await asyncio.to_thread(next, chunks, b""):
                yield data, offset, size
                offset += len(data)
        finally:
            await asyncio.to_thread(chunks.close)

    def _prefix(self, model: Model, export_format: str) -> str:
        return exports_prefix(model.tenant_id, model.id) + export_format + "/"

    def _manifest(self, prefix: str) -> dict[str, Any] | None:
        try:
            found = json.loads(self.store.get_bytes(prefix + "manifest.json"))
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return None
            raise
        return found if isinstance(found, dict) and found.get("files") and found.get("build") else None

    def _build(self, model: Model, export_format: str, prefix: str) -> dict[str, Any]:
        """Build the export in a temporary directory, upload it under a new build id, write the manifest last."""
        source_prefix = artifact_prefix(model.artifact_uri, self.store.bucket, model.tenant_id)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"export-{model.id}-{export_format}-", dir=self.work_dir))
        try:
            artifacts = work / "artifacts"
            artifacts.mkdir()
            if self.store.download_prefix(source_prefix, artifacts) == 0:
                raise FailedPrecondition(f"no artifacts found at {model.artifact_uri}", field="artifact_uri")
            out = work / "export"
            if export_format == "adapter":
                adapter_export(model, artifacts, out)
            else:
                merged = out if export_format == "merged" else work / "merged"
                merged_export(model, artifacts, merged)
                if export_format == "gguf":
                    gguf_export.convert(self.converter, merged, out, self.convert_timeout_s)
            (out / "README.md").write_text(model_card.render(model, export_format))
            build = secrets.token_hex(8)
            files = []
            for file in sorted(p for p in out.rglob("*") if p.is_file()):
                relative = file.relative_to(out).as_posix()
                files.append(ExportedFile(relative, file.stat().st_size, sha256_of(file)))
                self.store.put_file(prefix + build + "/" + relative, file)
            manifest = {"build": build, "format": export_format, "files": [asdict(f) for f in files]}
            self.store.put_bytes(prefix + "manifest.json", json.dumps(manifest).encode(), "application/json")
            return manifest
        finally:
            shutil.rmtree(work, ignore_errors=True)


def artifacts_of(store: ObjectStore, model: Model) -> list[tuple[str, int]]:
    """(path relative to artifact_uri, size) of each file of the model's artifacts; none where its
    artifact_uri is outside the tenant's prefix."""
    try:
        prefix = artifact_prefix(model.artifact_uri, store.bucket, model.tenant_id)
    except FailedPrecondition:
        return []
    return [(key[len(prefix) :], size) for key, size in store.sizes(prefix)]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def copy_artifacts(artifacts: Path, out: Path) -> None:
    """The artifact files as they are, less pickles and checkpoints."""
    shutil.copytree(artifacts, out, ignore=shutil.ignore_patterns(*LEFT_OUT, "checkpoint-*"), dirs_exist_ok=True)


def adapter_export(model: Model, artifacts: Path, out: Path) -> None:
    if not (artifacts / "adapter_config.json").is_file():
        raise FailedPrecondition(
            f"model {model.id} is a full fine-tune: it has no adapter to export. Use --format merged (its weights)",
            field="format",
        )
    copy_artifacts(artifacts, out)


def merged_export(model: Model, artifacts: Path, out: Path) -> None:
    """Full weights (safetensors) with the preprocessor: an adapter merged into its base, else as trained."""
    adapter = model.artifact_kind == registry_pb2.ARTIFACT_KIND_LORA_ADAPTER or (
        model.artifact_kind == registry_pb2.ARTIFACT_KIND_UNSPECIFIED and (artifacts / "adapter_config.json").is_file()
    )
    if not adapter:
        copy_artifacts(artifacts, out)
        return
    if is_speech(model) or is_ocr(model):
        from services.registry import read_image, transcribe

        loader = transcribe.load if is_speech(model) else read_image.load
        loaded: Any = loader(artifacts, model.base_model, model.artifact_kind)
        network, preprocessor = loaded.model, loaded.processor
    else:
        try:
            network, preprocessor = served_models.load(artifacts, model.base_model, adapter=True)
        except served_models.BaseModelUnavailable as err:
            raise FailedPrecondition(
                f"the base model {model.base_model!r} cannot be loaded to merge the adapter into: {err}",
                field="base_model",
            ) from None
    out.mkdir(parents=True, exist_ok=True)
    network.to("cpu").save_pretrained(out, safe_serialization=True)
    preprocessor.save_pretrained(out)
    for name in ("training_config.json", "chat_template.jinja"):
        if (artifacts / name).is_file() and not (out / name).is_file():
            shutil.copy2(artifacts / name, out / name)
