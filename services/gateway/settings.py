"""The gateway's settings, read once from the environment. It holds no database and no S3: it talks
gRPC to the registry, the teacher and ingest, and HTTP to vLLM upstreams."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.errors import InvalidArgument
from services.common.settings import ServerSettings, env_float, env_str, registry_address


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    registry_address: str
    # Where the OpenAI-compatible HTTP endpoint listens (host:port; port 0 picks a free one).
    http_address: str = "127.0.0.1:8080"
    # The teacher (proxy mode: "openai:gpt-4.1-mini" and the like); "" refuses proxy requests.
    teacher_address: str = ""
    # Ingest (captured traffic); "" refuses requests that ask to be stored.
    ingest_address: str = ""
    # Seconds one answer may take (a model's first load included), local engine or vLLM upstream.
    generate_timeout_s: float = 300.0
    # The bearer key the vLLM upstreams take ("" sends none). Never printed.
    vllm_api_key: str = field(default="", repr=False)
    # The largest request body taken (a clip to transcribe, an image to read); 413 beyond.
    max_body_bytes: int = 30 * 1024 * 1024

    @classmethod
    def from_env(cls) -> Settings:
        http_address = env_str("DISTILLERY_GATEWAY_HTTP_ADDRESS", cls.http_address)
        host, _, port = http_address.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument(f"DISTILLERY_GATEWAY_HTTP_ADDRESS={http_address!r}: use host:port")
        return cls(
            server=ServerSettings.from_env(),
            registry_address=registry_address(),
            http_address=http_address,
            teacher_address=env_str("DISTILLERY_TEACHER_ADDRESS", ""),
            ingest_address=env_str("DISTILLERY_INGEST_ADDRESS", ""),
            generate_timeout_s=env_float("DISTILLERY_GENERATE_TIMEOUT_S", cls.generate_timeout_s),
            vllm_api_key=env_str("DISTILLERY_VLLM_API_KEY", ""),
        )
