"""The teacher's provider adapters, a plain dict by the name used in ``<provider>:<model>``.

openai     chat completions (``openai`` SDK)
anthropic  messages (``anthropic`` SDK)
google     generate_content (``google-genai`` SDK)
platform   the deployment's own OpenAI-compatible endpoint (vLLM, llama.cpp's server):
           the openai adapter pointed at DISTILLERY_PLATFORM_BASE_URL

Each adapter module has ``connect``, ``complete``, ``check`` and ``close`` (see ``base``).
"""

from __future__ import annotations

from types import ModuleType

from services.common.errors import InvalidArgument
from services.teacher.providers import anthropic_messages, google_genai, openai_chat

PROVIDERS: dict[str, ModuleType] = {
    "openai": openai_chat,
    "anthropic": anthropic_messages,
    "google": google_genai,
    "platform": openai_chat,
}


def split_teacher(teacher: str) -> tuple[str, str]:
    """``"<provider>:<model>"`` as (provider, model); the model may hold colons itself."""
    provider, colon, model = teacher.strip().partition(":")
    if not colon or provider not in PROVIDERS or not model.strip():
        raise InvalidArgument(
            f"teacher {teacher!r} must be <provider>:<model> with provider one of {', '.join(PROVIDERS)}"
            " (e.g. openai:gpt-4o-mini)",
            field="teacher",
        )
    return provider, model.strip()
