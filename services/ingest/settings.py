"""The ingest service's settings, read once from the environment (see docs/configuration.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.settings import S3Settings, ServerSettings, database_url, env_float, env_str, registry_address
from services.ingest.asr import AsrLimits
from services.ingest.ocr import OcrLimits
from services.ingest.text_rows import TextLimits
from services.ingest.validation import Limits

MIB = 1024 * 1024


def _int(name: str, default: int) -> int:
    return int(env_float(name, default))


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    database_url: str
    s3: S3Settings
    registry_address: str
    # Largest upload accepted, in bytes, all files of a bundle together (DISTILLERY_MAX_UPLOAD_BYTES, 2 GiB).
    max_upload_bytes: int
    # Streams are staged in S3 every this many bytes; a dropped upload resumes from the last part.
    upload_part_bytes: int = 8 * MIB
    # How long a presigned upload URL stays valid.
    presign_expiry_s: float = 3600.0
    # Where uploads are received and checked ("" = the system's temporary folder).
    work_dir: str = ""
    # What each kind of dataset is checked against.
    limits: Limits = field(default_factory=Limits)

    def __repr__(self) -> str:
        return f"Settings(server={self.server!r}, s3={self.s3!r}, max_upload_bytes={self.max_upload_bytes})"

    @classmethod
    def from_env(cls) -> Settings:
        text = TextLimits(
            max_line_bytes=_int("DISTILLERY_MAX_LINE_BYTES", TextLimits.max_line_bytes),
            context_tokens=_int("DISTILLERY_CONTEXT_TOKENS", TextLimits.context_tokens),
        )
        asr = AsrLimits(
            max_clip_seconds=env_float("DISTILLERY_ASR_MAX_CLIP_S", AsrLimits.max_clip_seconds),
            max_line_bytes=text.max_line_bytes,
        )
        ocr = OcrLimits(
            max_entries=_int("DISTILLERY_ZIP_MAX_ENTRIES", OcrLimits.max_entries),
            max_total_bytes=_int("DISTILLERY_ZIP_MAX_BYTES", OcrLimits.max_total_bytes),
            max_entry_bytes=_int("DISTILLERY_ZIP_MAX_ENTRY_BYTES", OcrLimits.max_entry_bytes),
            max_ratio=env_float("DISTILLERY_ZIP_MAX_RATIO", OcrLimits.max_ratio),
            max_pixels=_int("DISTILLERY_IMAGE_MAX_PIXELS", OcrLimits.max_pixels),
            max_line_bytes=text.max_line_bytes,
        )
        return cls(
            server=ServerSettings.from_env(),
            database_url=database_url(),
            s3=S3Settings.from_env(),
            registry_address=registry_address(),
            max_upload_bytes=_int("DISTILLERY_MAX_UPLOAD_BYTES", 2 * 1024**3),
            upload_part_bytes=_int("DISTILLERY_UPLOAD_PART_BYTES", 8 * MIB),
            presign_expiry_s=env_float("DISTILLERY_PRESIGN_EXPIRY_S", 3600),
            work_dir=env_str("DISTILLERY_UPLOAD_DIR", ""),
            limits=Limits(text=text, asr=asr, ocr=ocr),
        )
