"""The teacher service's settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import S3Settings, ServerSettings, database_url, env_str, registry_address


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    database_url: str
    s3: S3Settings
    registry_address: str
    # Base64 of 32 bytes: the key that wraps the tenants' provider keys (DISTILLERY_MASTER_KEY).
    master_key: str
    # The deployment's own OpenAI-compatible endpoint for "platform:MODEL" teachers.
    platform_base_url: str

    def __repr__(self) -> str:
        return f"Settings(server={self.server!r}, s3={self.s3!r}, platform_base_url={self.platform_base_url!r})"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            server=ServerSettings.from_env(),
            database_url=database_url(),
            s3=S3Settings.from_env(),
            registry_address=registry_address(),
            master_key=env_str("DISTILLERY_MASTER_KEY", ""),
            platform_base_url=env_str("DISTILLERY_PLATFORM_BASE_URL", ""),
        )
