"""The registry's settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import S3Settings, ServerSettings, database_url, env_str


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

    def __repr__(self) -> str:
        return f"Settings(server={self.server!r}, s3={self.s3!r}, model_cache_dir={self.model_cache_dir!r})"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            server=ServerSettings.from_env(),
            database_url=database_url(),
            s3=S3Settings.from_env(),
            admin_token=env_str("DISTILLERY_ADMIN_TOKEN", ""),
            model_cache_dir=env_str("DISTILLERY_MODEL_CACHE_DIR", cls.model_cache_dir),
            gguf_converter=env_str("DISTILLERY_GGUF_CONVERTER", ""),
        )
