"""S3 through the ``minio`` client. Every key is prefixed by its tenant.

The minio client is synchronous; async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Generator
from datetime import timedelta
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.error import S3Error

from services.common.errors import InvalidArgument
from services.common.settings import S3Settings

_SAFE_PART = re.compile(r"^[A-Za-z0-9._=-]+$")


def tenant_key(tenant_id: str, *parts: str) -> str:
    """``tenants/<tenant>/<part>/...``; parts are checked so no key escapes its tenant."""
    for part in (tenant_id, *parts):
        if not _SAFE_PART.match(part) or part in (".", ".."):
            raise InvalidArgument(f"invalid object key part {part!r}")
    return "/".join(("tenants", tenant_id, *parts))


# Every call has a deadline: a stalled object store is UNAVAILABLE in seconds, not minio's default
# of 5 minutes a try and 5 tries. A read waits at most READ_TIMEOUT_S for the next bytes (not for
# the whole object), so large objects still stream.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 12.0
RETRIES = 1


def _http_client() -> urllib3.PoolManager:
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=RETRIES, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


class ObjectStore:
    def __init__(self, settings: S3Settings) -> None:
        self.bucket = settings.bucket
        self.client = Minio(
            settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.secure,
            region=settings.region,
            http_client=_http_client(),
        )
        # Presigned URLs are signed for the address users reach; signing needs no call to it.
        public = urlsplit(settings.public_endpoint if "//" in settings.public_endpoint else "")
        self.public_client = Minio(
            public.netloc or settings.public_endpoint or settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=public.scheme == "https" if public.scheme else settings.secure,
            region=settings.region,
        )

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as err:  # another service made it first
                if err.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        self.client.fput_object(self.bucket, key, str(path), content_type=content_type)

    def get_file(self, key: str, path: Path) -> None:
        self.client.fget_object(self.bucket, key, str(path))

    def size_of(self, key: str) -> int | None:
        """The object's size, or None when there is no such object."""
        try:
            return self.client.stat_object(self.bucket, key).size
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return None
            raise

    def presigned_put(self, key: str, expires_s: float) -> str:
        return self.public_client.presigned_put_object(self.bucket, key, expires=timedelta(seconds=expires_s))

    def presigned_get(self, key: str, expires_s: float) -> str:
        """A URL that GETs the object without credentials until it expires (signed for the public address)."""
        return self.public_client.presigned_get_object(self.bucket, key, expires=timedelta(seconds=expires_s))

    def chunks(self, key: str, offset: int = 0, chunk_bytes: int = 1024 * 1024) -> Generator[bytes]:
        """The object's bytes from ``offset`` on, ``chunk_bytes`` at a time, over one GET."""
        response = self.client.get_object(self.bucket, key, offset=offset)
        try:
            while data := response.read(chunk_bytes):
                yield data
        finally:
            response.close()
            response.release_conn()

    def get_bytes(self, key: str) -> bytes:
        response = self.client.get_object(self.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, in order."""
        return sorted(
            o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True) if o.object_name
        )

    def sizes(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size in bytes) of every object under ``prefix``, in key order."""
        found = self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
        return sorted((o.object_name, o.size or 0) for o in found if o.object_name and not o.object_name.endswith("/"))

    def delete_prefix(self, prefix: str) -> int:
        names = [o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)]
        for name in names:
            if name:
                self.client.remove_object(self.bucket, name)
        return len(names)

    def download_prefix(self, prefix: str, dest: Path) -> int:
        """Copy every object under ``prefix`` into ``dest``, keeping the key paths below the
        prefix; returns how many. End ``prefix`` with "/" so ``a/`` does not match ``ab/``."""
        count = 0
        for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            name = obj.object_name
            if not name or name.endswith("/"):
                continue
            relative = PurePosixPath(name[len(prefix) :].lstrip("/"))
            if not relative.parts or ".." in relative.parts:
                raise InvalidArgument(f"object key {name!r} cannot be a local file name")
            self.client.fget_object(self.bucket, name, str(dest.joinpath(*relative.parts)))
            count += 1
        return count
