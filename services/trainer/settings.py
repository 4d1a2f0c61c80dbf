"""The trainer service's settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import S3Settings, ServerSettings, database_url, env_str, registry_address


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    database_url: str
    s3: S3Settings
    registry_address: str
    ingest_address: str
    teacher_address: str
    # The Ray head's dashboard URL, for the Ray Jobs API (e.g. http://127.0.0.1:8265).
    ray_address: str

    def __repr__(self) -> str:
        return f"Settings(server={self.server!r}, s3={self.s3!r}, ray_address={self.ray_address!r})"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            server=ServerSettings.from_env(),
            database_url=database_url(),
            s3=S3Settings.from_env(),
            registry_address=registry_address(),
            ingest_address=env_str("DISTILLERY_INGEST_ADDRESS"),
            teacher_address=env_str("DISTILLERY_TEACHER_ADDRESS"),
            ray_address=env_str("DISTILLERY_RAY_ADDRESS", ""),
        )
