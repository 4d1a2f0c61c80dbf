"""The ingest service's settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import S3Settings, ServerSettings, database_url, env_float, registry_address


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    database_url: str
    s3: S3Settings
    registry_address: str
    # Largest upload accepted, in bytes (DISTILLERY_MAX_UPLOAD_BYTES, default 2 GiB).
    max_upload_bytes: int

    def __repr__(self) -> str:
        return f"Settings(server={self.server!r}, s3={self.s3!r}, max_upload_bytes={self.max_upload_bytes})"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            server=ServerSettings.from_env(),
            database_url=database_url(),
            s3=S3Settings.from_env(),
            registry_address=registry_address(),
            max_upload_bytes=int(env_float("DISTILLERY_MAX_UPLOAD_BYTES", 2 * 1024**3)),
        )
