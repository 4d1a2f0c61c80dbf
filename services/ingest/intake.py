"""From an upload to a dataset version: receive the bytes (resumably, or from presigned
PUTs), check them by kind, store them. Nothing a user sent is lost: an invalid upload
is stored too, with its report, and cannot be trained on. An upload of no bytes
at all is the exception: it is answered with its ``empty_file`` report and nothing
(no session, no object, no dataset) is kept.

Streams stage their bytes in S3 under ``tenants/<t>/staging/<upload_id>/`` every
``part_bytes`` and acknowledge the offset in the upload's session; a resumed stream
restores the staged parts and goes on from there. Presigned PUTs land under
``staging/<upload_id>/files/``. Staging is removed once the dataset is stored.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from psycopg_pool import AsyncConnectionPool

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.objects import ObjectStore, tenant_key
from services.common.reports import Report
from services.ingest import datasets, upload_sessions, validation
from services.ingest.uploads import (
    Plan,
    Writer,
    check_upload_id,
    checked_hashes,
    content_digest,
    local_path,
    new_upload_id,
    receive,
)

T = TypeVar("T")


async def _uncancelled(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end even if the caller is cancelled, as gRPC cancels a call whose client
    dropped: a session opened or a part received is then kept, and the client resumes from it."""
    return await asyncio.shield(asyncio.ensure_future(work))


@dataclass(frozen=True)
class Outcome:
    dataset: datasets.Dataset | None  # None when nothing was stored (an empty upload)
    report: dict[str, Any]
    reused: bool
    upload_id: str


@dataclass(frozen=True)
class Presigned:
    upload_id: str
    urls: list[tuple[str, str]]  # (file name, PUT URL), in the plan's order
    expires_at: datetime


class Intake:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        store: ObjectStore,
        limits: validation.Limits,
        *,
        part_bytes: int,
        presign_expiry_s: float,
        work_dir: str | None = None,
    ) -> None:
        self.pool = pool
        self.store = store
        self.limits = limits
        self.part_bytes = part_bytes
        self.presign_expiry_s = presign_expiry_s
        self.work_dir = work_dir

    @contextmanager
    def _folder(self) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="upload-", dir=self.work_dir) as folder:
            yield Path(folder)

    def _staging(self, tenant_id: str, upload_id: str, *parts: str) -> str:
        return tenant_key(tenant_id, "staging", upload_id, *parts) + ("" if parts else "/")

    async def upload(
        self, tenant_id: str, plan: Plan, upload_id: str, offset: int, chunks: AsyncIterator[tuple[int, bytes]]
    ) -> Outcome:
        upload_id = check_upload_id(upload_id) if upload_id else new_upload_id()
        if plan.total == 0:
            return Outcome(None, (await self.validate(plan, chunks)).to_json(), False, upload_id)
        session = await _uncancelled(upload_sessions.open_session(self.pool, tenant_id, upload_id, plan, offset=offset))
        if session.dataset_id:  # all of it arrived before and only the answer was lost
            return await self._reuse(tenant_id, session.dataset_id, upload_id)

        async def keep(at: int, data: bytes) -> None:
            key = self._staging(tenant_id, upload_id, f"{at:020d}")
            await asyncio.to_thread(self.store.put_bytes, key, data)
            await upload_sessions.acknowledge(self.pool, tenant_id, upload_id, at, at + len(data))

        async def stage(at: int, data: bytes) -> None:
            await _uncancelled(keep(at, data))

        with self._folder() as folder:
            writer = Writer(plan, folder)
            await self._restore(tenant_id, upload_id, writer, session.acknowledged)
            await receive(chunks, writer, stage=stage, part_bytes=self.part_bytes)
            return await self._store(tenant_id, plan, folder, upload_id)

    async def _restore(self, tenant_id: str, upload_id: str, writer: Writer, acknowledged: int) -> None:
        """Write the staged parts below the acknowledged offset back into the work folder."""
        for key in await asyncio.to_thread(self.store.keys, self._staging(tenant_id, upload_id)):
            name = key.rsplit("/", 1)[-1]
            if not name.isdigit() or int(name) >= acknowledged:
                continue
            if int(name) != writer.offset:
                raise FailedPrecondition(f"upload {upload_id} lost a staged part; start it again with a new upload_id")
            writer.write(await asyncio.to_thread(self.store.get_bytes, key))
        writer.close()
        if writer.offset != acknowledged:
            raise FailedPrecondition(f"upload {upload_id} lost a staged part; start it again with a new upload_id")

    async def validate(self, plan: Plan, chunks: AsyncIterator[tuple[int, bytes]]) -> Report:
        """Check an upload without storing anything."""
        with self._folder() as folder:
            await receive(chunks, Writer(plan, folder))
            await asyncio.to_thread(checked_hashes, plan, folder)
            return await asyncio.to_thread(validation.check, plan, folder, self.limits)

    async def create_upload_url(self, tenant_id: str, plan: Plan, upload_id: str) -> Presigned:
        upload_id = check_upload_id(upload_id) if upload_id else new_upload_id()
        if plan.total == 0:
            names = ", ".join(repr(spec.name) for spec in plan.files)
            raise InvalidArgument(
                f"{names} {'is' if len(plan.files) == 1 else 'are'} empty (0 bytes; empty_file): there is nothing to "
                "PUT; write the dataset's rows into it and send it again (UploadDataset answers an empty upload "
                "with its validation report)",
                field="header.files" if plan.is_bundle else "header.filename",
            )
        await upload_sessions.open_session(self.pool, tenant_id, upload_id, plan, offset=0, presigned=True)
        urls = []
        for i, spec in enumerate(plan.files):
            key = self._staging(tenant_id, upload_id, "files", f"{i:05d}")
            urls.append((spec.name, await asyncio.to_thread(self.store.presigned_put, key, self.presign_expiry_s)))
        return Presigned(upload_id, urls, datetime.now(UTC) + timedelta(seconds=self.presign_expiry_s))

    async def register_upload(self, tenant_id: str, upload_id: str) -> Outcome:
        session = await upload_sessions.get(self.pool, tenant_id, check_upload_id(upload_id))
        if not session.presigned:
            raise FailedPrecondition(f"upload {upload_id} is a stream, not presigned: resume it with UploadDataset")
        if session.dataset_id:
            return await self._reuse(tenant_id, session.dataset_id, upload_id)
        plan = session.the_plan
        with self._folder() as folder:
            for i, spec in enumerate(plan.files):
                key = self._staging(tenant_id, upload_id, "files", f"{i:05d}")
                size = await asyncio.to_thread(self.store.size_of, key)
                if size is None:
                    raise FailedPrecondition(f"{spec.name!r} has not been PUT to its presigned URL yet", field="files")
                if size != spec.size:
                    raise InvalidArgument(
                        f"{spec.name!r} is {size} bytes in storage, the header declared {spec.size}; PUT the whole "
                        "file again, or start a new upload with its real size",
                        field="header.size_bytes",
                    )
                await asyncio.to_thread(self.store.get_file, key, local_path(folder, i))
            return await self._store(tenant_id, plan, folder, upload_id)

    async def upload_status(self, tenant_id: str, upload_id: str) -> upload_sessions.Session:
        return await upload_sessions.get(self.pool, tenant_id, check_upload_id(upload_id))

    async def _reuse(self, tenant_id: str, ds_id: str, upload_id: str) -> Outcome:
        found = await datasets.get(self.pool, tenant_id, ds_id)
        return Outcome(found, found.report, True, upload_id)

    async def _store(self, tenant_id: str, plan: Plan, folder: Path, upload_id: str) -> Outcome:
        hashes = await asyncio.to_thread(checked_hashes, plan, folder)
        digest = content_digest(plan, hashes)
        ds_id = datasets.dataset_id(digest)
        existing = await datasets.find(self.pool, tenant_id, ds_id)
        if existing is not None:
            await self._done(tenant_id, upload_id, ds_id)
            return Outcome(existing, existing.report, True, upload_id)
        keys = {spec.name: tenant_key(tenant_id, "uploads", sha) for spec, sha in zip(plan.files, hashes, strict=True)}
        report = await asyncio.to_thread(validation.check, plan, folder, self.limits, keys)
        for i, spec in enumerate(plan.files):
            if await asyncio.to_thread(self.store.size_of, keys[spec.name]) is None:
                await asyncio.to_thread(self.store.put_file, keys[spec.name], local_path(folder, i))
        canonical_key = ""
        if report.valid:
            canonical_key = tenant_key(tenant_id, "datasets", ds_id, validation.CANONICAL)
            await asyncio.to_thread(
                self.store.put_file, canonical_key, folder / validation.CANONICAL, "application/jsonl"
            )
        main = plan.manifest or plan.files[0].name
        stored = await datasets.insert(
            self.pool,
            datasets.Dataset(
                tenant_id=tenant_id, id=ds_id, display_name=plan.display_name, kind=plan.kind,
                source_format=plan.source_format, source_sha256=digest if plan.is_bundle else hashes[0],
                size_bytes=plan.total, rows=report.rows, valid=bool(canonical_key), object_key=keys[main],
                report=report.to_json(), canonical_key=canonical_key, created_at=None,  # type: ignore[arg-type]
            ),
        )  # fmt: skip
        await self._done(tenant_id, upload_id, ds_id)
        return Outcome(stored, stored.report, False, upload_id)

    async def _done(self, tenant_id: str, upload_id: str, ds_id: str) -> None:
        await upload_sessions.finish(self.pool, tenant_id, upload_id, ds_id)
        await asyncio.to_thread(self.store.delete_prefix, self._staging(tenant_id, upload_id))
