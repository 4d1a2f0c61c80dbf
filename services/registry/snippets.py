"""API-ready request snippets for calling a model through Generate (a speech model: Transcribe; an OCR model:
ReadImage): grpcurl, python (the SDK) and cli. There is no curl snippet: the services speak gRPC only, with no HTTP
gateway in front of them; grpcurl finds Generate through the services' reflection.

tests/test_generate.py runs every snippet against a running stack."""

from __future__ import annotations

from services.common.errors import InvalidArgument

_GRPCURL = """grpcurl -plaintext -H "authorization: Bearer $DISTILLERY_API_KEY" \\
  -d '{{"model_id": "{model_id}", "messages": [{{"role": "user", "content": "Hello"}}], "max_new_tokens": 128}}' \\
  "$DISTILLERY_REGISTRY_ADDRESS" distillery.registry.v1.RegistryService/Generate"""

_PYTHON = """from distillery.client import Client
from distillery.registry.v1 import registry_pb2

client = Client.from_environment()  # DISTILLERY_API_KEY, DISTILLERY_REGISTRY_ADDRESS
reply = client.registry.Generate(registry_pb2.GenerateRequest(
    model_id="{model_id}",
    messages=[registry_pb2.ChatMessage(role="user", content="Hello")],
    max_new_tokens=128,
))
print(reply.message.content)"""

_CLI = """distillery models generate {model_id} "Hello\""""

TEMPLATES = {"grpcurl": _GRPCURL, "python": _PYTHON, "cli": _CLI}

# Speech models (path finetune-asr) transcribe a .wav clip instead (grpcurl takes bytes as base64).
_GRPCURL_SPEECH = """grpcurl -plaintext -H "authorization: Bearer $DISTILLERY_API_KEY" \\
  -d '{{"model_id": "{model_id}", "audio": "'"$(base64 -w0 clip.wav)"'"}}' \\
  "$DISTILLERY_REGISTRY_ADDRESS" distillery.registry.v1.RegistryService/Transcribe"""

_PYTHON_SPEECH = """from pathlib import Path

from distillery.client import Client
from distillery.registry.v1 import registry_pb2

client = Client.from_environment()  # DISTILLERY_API_KEY, DISTILLERY_REGISTRY_ADDRESS
reply = client.registry.Transcribe(registry_pb2.TranscribeRequest(
    model_id="{model_id}",
    audio=Path("clip.wav").read_bytes(),
))
print(reply.text, reply.language)"""

_CLI_SPEECH = """distillery models transcribe {model_id} clip.wav"""

SPEECH_TEMPLATES = {"grpcurl": _GRPCURL_SPEECH, "python": _PYTHON_SPEECH, "cli": _CLI_SPEECH}

# OCR models (path finetune-ocr) read an image instead (an empty prompt: the model's default OCR prompt).
_GRPCURL_OCR = """grpcurl -plaintext -H "authorization: Bearer $DISTILLERY_API_KEY" \\
  -d '{{"model_id": "{model_id}", "image": "'"$(base64 -w0 page.png)"'"}}' \\
  "$DISTILLERY_REGISTRY_ADDRESS" distillery.registry.v1.RegistryService/ReadImage"""

_PYTHON_OCR = """from pathlib import Path

from distillery.client import Client
from distillery.registry.v1 import registry_pb2

client = Client.from_environment()  # DISTILLERY_API_KEY, DISTILLERY_REGISTRY_ADDRESS
reply = client.registry.ReadImage(registry_pb2.ReadImageRequest(
    model_id="{model_id}",
    image=Path("page.png").read_bytes(),
))
print(reply.text)"""

_CLI_OCR = """distillery models read {model_id} page.png"""

OCR_TEMPLATES = {"grpcurl": _GRPCURL_OCR, "python": _PYTHON_OCR, "cli": _CLI_OCR}


def for_model(model_id: str, language: str = "", *, speech: bool = False, ocr: bool = False) -> dict[str, str]:
    """The snippets for ``model_id`` (all, or the one ``language``); ``speech``: a speech model's (Transcribe);
    ``ocr``: an OCR model's (ReadImage)."""
    templates = OCR_TEMPLATES if ocr else SPEECH_TEMPLATES if speech else TEMPLATES
    if language and language not in templates:
        raise InvalidArgument(f"no snippet for {language!r}: use one of {', '.join(templates)}", field="language")
    chosen = [language] if language else list(templates)
    return {name: templates[name].format(model_id=model_id) for name in chosen}
