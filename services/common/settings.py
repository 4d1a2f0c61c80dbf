"""Settings from environment variables, read once per process.

Each service has one frozen dataclass (``services/<name>/settings.py``) built by
``from_env``; the pieces every service shares live here. Every variable is listed
with its default in ``docs/configuration.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from services.common.errors import InvalidArgument


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name)
    if value is None or value == "":
        if default is None:
            raise InvalidArgument(f"environment variable {name} is required but not set")
        return default
    return value


def env_secret(name: str, default: str = "") -> str:
    """A secret from ``NAME``, or from the file that ``NAME_FILE`` names (a mounted Kubernetes Secret);
    setting both is refused, as it is unclear which one holds. Surrounding whitespace is dropped."""
    path = os.environ.get(name + "_FILE", "")
    if path and os.environ.get(name):
        raise InvalidArgument(f"set {name} or {name}_FILE, not both")
    if not path:
        return env_str(name, default)
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as err:
        raise InvalidArgument(f"{name}_FILE={path}: cannot read it ({err.strerror}); mount the secret there") from None
    if not value:
        raise InvalidArgument(f"{name}_FILE={path} is empty: put the secret in it")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise InvalidArgument(f"environment variable {name}={raw!r} is not a number") from None


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise InvalidArgument(f"environment variable {name}={raw!r} must be true or false")


@dataclass(frozen=True)
class ServerSettings:
    """How a service listens, logs and traces."""

    # host:port to bind; port 0 picks a free one.
    grpc_address: str = "127.0.0.1:0"
    log_level: str = "INFO"
    # "none" (default), "console" or "otlp" (OTEL_EXPORTER_OTLP_ENDPOINT).
    tracing: str = "none"
    # Deadline in seconds on every outgoing call to another service.
    rpc_timeout_s: float = 10.0
    # Seconds in-flight calls get to finish on SIGTERM.
    shutdown_grace_s: float = 5.0
    # Shared secret the services use to call each other on a tenant's behalf; "" refuses such calls.
    service_token: str = field(default="", repr=False)

    @classmethod
    def from_env(cls) -> ServerSettings:
        tracing = env_str("DISTILLERY_TRACING", "none").lower()
        if tracing not in ("none", "console", "otlp"):
            raise InvalidArgument(f"DISTILLERY_TRACING={tracing!r}: use none, console or otlp")
        return cls(
            grpc_address=env_str("DISTILLERY_GRPC_ADDRESS", cls.grpc_address),
            log_level=env_str("DISTILLERY_LOG_LEVEL", cls.log_level).upper(),
            tracing=tracing,
            rpc_timeout_s=env_float("DISTILLERY_RPC_TIMEOUT_S", cls.rpc_timeout_s),
            shutdown_grace_s=env_float("DISTILLERY_SHUTDOWN_GRACE_S", cls.shutdown_grace_s),
            service_token=env_str("DISTILLERY_SERVICE_TOKEN", ""),
        )


@dataclass(frozen=True)
class S3Settings:
    endpoint: str  # host:port
    access_key: str
    secret_key: str
    bucket: str = "distillery"
    secure: bool = False
    region: str = "us-east-1"
    # Where users reach S3 for presigned uploads ("https://s3.example.com" or host:port);
    # "" means the endpoint above.
    public_endpoint: str = ""

    def __repr__(self) -> str:  # never print the secret
        return f"S3Settings(endpoint={self.endpoint!r}, bucket={self.bucket!r}, secure={self.secure})"

    @classmethod
    def from_env(cls) -> S3Settings:
        return cls(
            endpoint=env_str("DISTILLERY_S3_ENDPOINT"),
            access_key=env_str("DISTILLERY_S3_ACCESS_KEY"),
            secret_key=env_str("DISTILLERY_S3_SECRET_KEY"),
            bucket=env_str("DISTILLERY_S3_BUCKET", cls.bucket),
            secure=env_bool("DISTILLERY_S3_SECURE", cls.secure),
            region=env_str("DISTILLERY_S3_REGION", cls.region),
            public_endpoint=env_str("DISTILLERY_S3_PUBLIC_ENDPOINT", ""),
        )


def database_url() -> str:
    """postgresql://user:password@host:port/dbname"""
    return env_str("DISTILLERY_DATABASE_URL")


def registry_address() -> str:
    """Where the registry listens; every service resolves API keys through it."""
    return env_str("DISTILLERY_REGISTRY_ADDRESS")
