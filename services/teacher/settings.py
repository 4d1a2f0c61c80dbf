"""The teacher service's settings, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from services.common.errors import InvalidArgument
from services.common.settings import (
    S3Settings,
    ServerSettings,
    database_url,
    env_float,
    env_secret,
    env_str,
    registry_address,
)

PROVIDER_NAMES = ("openai", "anthropic", "google", "platform")


def _env_int(name: str, default: int) -> int:
    value = env_float(name, default)
    if value < 0 or value != int(value):
        raise InvalidArgument(f"environment variable {name}={os.environ.get(name)!r} must be a whole number >= 0")
    return int(value)


@dataclass(frozen=True)
class ProviderSettings:
    """How the teacher reaches one provider, and how hard it may push it."""

    # Empty: the vendor's own endpoint. For "platform", the deployment's OpenAI-compatible URL.
    base_url: str = ""
    # The deployment's own key for this provider (usage billed); "" when tenants must bring theirs.
    api_key: str = field(default="", repr=False)
    # Requests in flight at once, across every job of this teacher instance.
    concurrency: int = 16
    # Token-bucket limits; 0 means no limit of that kind.
    requests_per_minute: int = 500
    tokens_per_minute: int = 0

    @classmethod
    def from_env(cls, provider: str) -> ProviderSettings:
        prefix = f"DISTILLERY_{provider.upper()}_"
        platform = provider == "platform"
        return cls(
            base_url=env_str(prefix + "BASE_URL", ""),
            api_key=env_str(prefix + "API_KEY", ""),
            concurrency=max(1, _env_int(prefix + "CONCURRENCY", 4 if platform else 16)),
            requests_per_minute=_env_int(prefix + "RPM", 0 if platform else 500),
            tokens_per_minute=_env_int(prefix + "TPM", 0),
        )


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    database_url: str
    s3: S3Settings
    registry_address: str
    # Base64 of 32 bytes: the key that wraps the tenants' provider keys (DISTILLERY_MASTER_KEY, or the file
    # DISTILLERY_MASTER_KEY_FILE names: a mounted Kubernetes Secret).
    master_key: str = field(default="", repr=False)
    # Where ingest listens: generated rows become datasets there.
    ingest_address: str = ""
    providers: dict[str, ProviderSettings] = field(
        default_factory=lambda: {p: ProviderSettings() for p in PROVIDER_NAMES}
    )
    # Seconds one provider request may take before it counts as a (retried) timeout.
    request_timeout_s: float = 120.0
    # Tries per row for retryable failures (429, 529, 5xx, timeouts) before the row fails.
    max_attempts: int = 6
    # Upper bound of one backoff wait, in seconds (full jitter below it).
    max_backoff_s: float = 60.0
    # Seconds between looks for jobs to drive and lease renewals (a lease lasts three of them).
    job_lease_s: float = 5.0

    @property
    def platform_base_url(self) -> str:
        return self.providers["platform"].base_url

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            server=ServerSettings.from_env(),
            database_url=database_url(),
            s3=S3Settings.from_env(),
            registry_address=registry_address(),
            master_key=env_secret("DISTILLERY_MASTER_KEY"),
            ingest_address=env_str("DISTILLERY_INGEST_ADDRESS", ""),
            providers={p: ProviderSettings.from_env(p) for p in PROVIDER_NAMES},
            request_timeout_s=env_float("DISTILLERY_TEACHER_TIMEOUT_S", 120.0),
            max_attempts=max(1, _env_int("DISTILLERY_TEACHER_MAX_ATTEMPTS", 6)),
            max_backoff_s=env_float("DISTILLERY_TEACHER_MAX_BACKOFF_S", 60.0),
            job_lease_s=env_float("DISTILLERY_TEACHER_LEASE_S", 5.0),
        )
