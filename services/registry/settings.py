"""The registry's settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import S3Settings, ServerSettings, database_url, env_float, env_str


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    database_url: str
    s3: S3Settings
    # Token for tenant administration (CreateTenant, keys for any tenant); "" disables it.
    admin_token: str
    # Where Generate keeps models' artifacts copied from S3 (one directory per model).
    model_cache_dir: str = "~/.cache/distillery/models"
    # llama.cpp's convert_hf_to_gguf.py for "gguf" exports; "": where deploy/native/gguf_converter.sh puts it
    # in this Python environment (<prefix>/share/distillery/llama.cpp-convert/).
    gguf_converter: str = ""
    # The gateway's base URL (its OpenAI-compatible endpoint is gateway_url + "/v1"): deployments and
    # snippets name it. "": unknown (snippets then read $DISTILLERY_GATEWAY_URL).
    gateway_url: str = ""
    # The cluster's vLLM pool (an OpenAI-compatible base URL serving LoRA adapters by name): deployments
    # with the "vllm" engine route there; "" leaves only the local engine.
    vllm_url: str = ""
    # A full fine-tune on vLLM gets a dedicated upstream: a URL template with "{model_id}"; "" refuses them.
    vllm_dedicated_url: str = ""
    # The local engine keeps at most this many models in memory (least recently used leaves first).
    max_loaded_models: int = 2

    def __repr__(self) -> str:
        return (
            f"Settings(server={self.server!r}, s3={self.s3!r}, model_cache_dir={self.model_cache_dir!r}, "
            f"gateway_url={self.gateway_url!r}, vllm_url={self.vllm_url!r})"
        )

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            server=ServerSettings.from_env(),
            database_url=database_url(),
            s3=S3Settings.from_env(),
            admin_token=env_str("DISTILLERY_ADMIN_TOKEN", ""),
            model_cache_dir=env_str("DISTILLERY_MODEL_CACHE_DIR", cls.model_cache_dir),
            gguf_converter=env_str("DISTILLERY_GGUF_CONVERTER", ""),
            gateway_url=env_str("DISTILLERY_GATEWAY_URL", "").rstrip("/"),
            vllm_url=env_str("DISTILLERY_VLLM_URL", "").rstrip("/"),
            vllm_dedicated_url=env_str("DISTILLERY_VLLM_DEDICATED_URL", ""),
            max_loaded_models=max(1, int(env_float("DISTILLERY_MAX_LOADED_MODELS", cls.max_loaded_models))),
        )
