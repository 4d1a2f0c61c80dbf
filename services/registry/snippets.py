"""API-ready request snippets for calling a model, as printed by `distillery models snippet MODEL --lang LANG`.

- curl, python (the official ``openai`` SDK), typescript (the ``openai`` npm package): the gateway's
  OpenAI-compatible endpoint (the registry's ``gateway_url`` + "/v1"; where the registry does not know it,
  ``$DISTILLERY_GATEWAY_URL`` + "/v1"). A text model answers chat completions; a speech model (path
  finetune-asr) transcribes a clip at ``/v1/audio/transcriptions``; an OCR model (finetune-ocr) reads an image
  sent as an ``image_url`` content part (a base64 data: URL). The model must be deployed
  (`distillery models deploy MODEL`) for the endpoint to serve it.
- grpcurl: the registry's own runtime-testing RPC (Generate, Transcribe or ReadImage) through its reflection.
- cli: the same through `distillery models generate|transcribe|read`.

Every snippet reads the API key from ``$DISTILLERY_API_KEY``; none holds it (``custom``: the placeholder
``YOUR_API_KEY`` instead, and ``YOUR_GATEWAY_URL`` where the registry does not know the gateway's URL).
tests/test_snippets.py runs them.

A text model's snippets carry its profile (docs/optimization.md "Snippets"): by reference (``"profile": NAME``
in the body; the SDKs send it as an extra body parameter), or ``inline``: the profile's sampling as request
parameters (top_k, min_p, repetition_penalty and the ``vectors`` extra parameters) and no profile named
(``"profile": "none"``, so the model's default profile does not apply under them).
"""

from __future__ import annotations

import json
from typing import Any

from services.common.errors import InvalidArgument
from services.registry.profiles import GREEDY, NONE, Profile

LANGUAGES = ("curl", "python", "typescript", "grpcurl", "cli")

# Placeholders: @MODEL@ the model id; @BASE@ / @BASE_PY@ / @BASE_TS@ the endpoint's base URL as each language
# writes it. (Not str.format: the snippets are full of braces.)
_AUTH = '-H "Authorization: Bearer $DISTILLERY_API_KEY"'

TEXT = {
    "curl": f"""curl -sS "@BASE@/chat/completions" \\
  {_AUTH} \\
  -H "Content-Type: application/json" \\
  -d '{{"model": "@MODEL@", "messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 128}}'""",
    "python": """import os

from openai import OpenAI

client = OpenAI(base_url=@BASE_PY@, api_key=os.environ["DISTILLERY_API_KEY"])
reply = client.chat.completions.create(
    model="@MODEL@",
    messages=[{"role": "user", "content": "Hello"}],
    max_tokens=128,
)
print(reply.choices[0].message.content)""",
    "typescript": """import OpenAI from "openai";

const client = new OpenAI({ baseURL: @BASE_TS@, apiKey: process.env.DISTILLERY_API_KEY });
const reply = await client.chat.completions.create({
  model: "@MODEL@",
  messages: [{ role: "user", content: "Hello" }],
  max_tokens: 128,
});
console.log(reply.choices[0].message.content);""",
    "grpcurl": """grpcurl -plaintext -H "authorization: Bearer $DISTILLERY_API_KEY" \\
  -d '{"model_id": "@MODEL@", "messages": [{"role": "user", "content": "Hello"}], "max_new_tokens": 128}' \\
  "$DISTILLERY_REGISTRY_ADDRESS" distillery.registry.v1.RegistryService/Generate""",
    "cli": 'distillery models generate @MODEL@ "Hello"',
}

# Speech models transcribe a .wav clip.
SPEECH = {
    "curl": f"""curl -sS "@BASE@/audio/transcriptions" \\
  {_AUTH} \\
  -F model=@MODEL@ -F file=@clip.wav""",
    "python": """import os

from openai import OpenAI

client = OpenAI(base_url=@BASE_PY@, api_key=os.environ["DISTILLERY_API_KEY"])
with open("clip.wav", "rb") as clip:
    transcript = client.audio.transcriptions.create(model="@MODEL@", file=clip)
print(transcript.text)""",
    "typescript": """import fs from "node:fs";
import OpenAI from "openai";

const client = new OpenAI({ baseURL: @BASE_TS@, apiKey: process.env.DISTILLERY_API_KEY });
const transcript = await client.audio.transcriptions.create({
  model: "@MODEL@",
  file: fs.createReadStream("clip.wav"),
});
console.log(transcript.text);""",
    "grpcurl": """grpcurl -plaintext -H "authorization: Bearer $DISTILLERY_API_KEY" \\
  -d '{"model_id": "@MODEL@", "audio": "'"$(base64 -w0 clip.wav)"'"}' \\
  "$DISTILLERY_REGISTRY_ADDRESS" distillery.registry.v1.RegistryService/Transcribe""",
    "cli": "distillery models transcribe @MODEL@ clip.wav",
}

# OCR models read an image, sent as a base64 data: URL (the JSON goes through stdin: an image outgrows an argument).
OCR = {
    "curl": f"""{{ printf '{{"model": "@MODEL@", "messages": [{{"role": "user", "content": '
  printf '[{{"type": "image_url", "image_url": {{"url": "data:image/png;base64,'
  base64 -w0 page.png
  printf '"}}}}]}}]}}'; }} |
curl -sS "@BASE@/chat/completions" \\
  {_AUTH} \\
  -H "Content-Type: application/json" --data-binary @-""",
    "python": """import base64
import os

from openai import OpenAI

client = OpenAI(base_url=@BASE_PY@, api_key=os.environ["DISTILLERY_API_KEY"])
with open("page.png", "rb") as page:
    image = base64.b64encode(page.read()).decode()
reply = client.chat.completions.create(
    model="@MODEL@",
    messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
    ]}],
)
print(reply.choices[0].message.content)""",
    "typescript": """import fs from "node:fs";
import OpenAI from "openai";

const client = new OpenAI({ baseURL: @BASE_TS@, apiKey: process.env.DISTILLERY_API_KEY });
const image = fs.readFileSync("page.png").toString("base64");
const reply = await client.chat.completions.create({
  model: "@MODEL@",
  messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: `data:image/png;base64,${image}` } }] }],
});
console.log(reply.choices[0].message.content);""",
    "grpcurl": """grpcurl -plaintext -H "authorization: Bearer $DISTILLERY_API_KEY" \\
  -d '{"model_id": "@MODEL@", "image": "'"$(base64 -w0 page.png)"'"}' \\
  "$DISTILLERY_REGISTRY_ADDRESS" distillery.registry.v1.RegistryService/ReadImage""",
    "cli": "distillery models read @MODEL@ page.png",
}


def base_urls(gateway_url: str) -> dict[str, str]:
    """The endpoint's base URL as each snippet writes it: the registry's gateway_url + "/v1", else read from
    $DISTILLERY_GATEWAY_URL when the snippet runs."""
    if gateway_url:
        base = gateway_url.rstrip("/") + "/v1"
        return {"@BASE@": base, "@BASE_PY@": f'"{base}"', "@BASE_TS@": f'"{base}"'}
    return {
        "@BASE@": "$DISTILLERY_GATEWAY_URL/v1",
        "@BASE_PY@": 'os.environ["DISTILLERY_GATEWAY_URL"] + "/v1"',
        "@BASE_TS@": 'process.env.DISTILLERY_GATEWAY_URL + "/v1"',
    }


def for_model(
    model_id: str, language: str = "", *, gateway_url: str = "", speech: bool = False, ocr: bool = False,
    profile: Profile | None = None, inline: bool = False, custom: bool = False,
) -> dict[str, str]:  # fmt: skip
    """The snippets for ``model_id`` (all, or the one ``language``); ``speech``: a speech model's; ``ocr``: an
    OCR model's; a text model's carry ``profile`` (by reference, or ``inline``); ``custom``: placeholders."""
    if language and language not in LANGUAGES:
        raise InvalidArgument(f"no snippet for {language!r}: use one of {', '.join(LANGUAGES)}", field="language")
    templates = OCR if ocr else SPEECH if speech else TEXT
    if custom and not gateway_url:
        gateway_url = "https://YOUR_GATEWAY_URL"
    values = {"@MODEL@": model_id, **base_urls(gateway_url)}
    carried = None if speech or ocr else Carried(profile, inline)
    snippets = {}
    for name in [language] if language else LANGUAGES:
        code = templates[name] if carried is None else carried.text(name)
        for placeholder in ("@BASE_PY@", "@BASE_TS@", "@BASE@", "@MODEL@"):
            code = code.replace(placeholder, values[placeholder])
        snippets[name] = placeholders(code) if custom else code
    return snippets


def placeholders(code: str) -> str:
    """The key as a placeholder, not read from the environment."""
    for env, placeholder in (
        ('os.environ["DISTILLERY_API_KEY"]', '"YOUR_API_KEY"'), ("process.env.DISTILLERY_API_KEY", '"YOUR_API_KEY"'),
        ("$DISTILLERY_API_KEY", "YOUR_API_KEY"),
    ):  # fmt: skip
        code = code.replace(env, placeholder)
    return code


# OpenAI's own chat completion parameters; the others go as extra body parameters (the SDKs' extra_body).
_OPENAI_PARAMS = ("temperature", "top_p", "max_tokens", "stop")
_DEFAULT_MAX_TOKENS = 128


class Carried:
    """A text model's request parameters for a profile: by reference or inline."""

    def __init__(self, profile: Profile | None, inline: bool) -> None:
        self.params: dict[str, Any] = {}
        self.grpc: dict[str, Any] = {}
        self.profile = profile
        if profile is None:
            self.params = {"max_tokens": _DEFAULT_MAX_TOKENS}
            self.grpc = {"max_new_tokens": _DEFAULT_MAX_TOKENS}
        elif not inline:  # by reference: the profile's settings (its max_tokens too) apply
            self.params = {"profile": profile.name}
            self.grpc = {"profile": profile.name}
        else:
            s = profile.sampling
            given: dict[str, Any] = {"temperature": 0.0 if s.strategy == GREEDY else s.temperature, "top_p": s.top_p,
                     "max_tokens": s.max_tokens, "stop": list(s.stop) or None, "top_k": s.top_k, "min_p": s.min_p,
                     "repetition_penalty": s.repetition_penalty}  # fmt: skip
            vectors = [
                {"id": v.vector_id, "strength": v.strength}
                | ({"first_layer": v.first_layer, "last_layer": v.last_layer} if v.first_layer or v.last_layer else {})
                for v in profile.vectors
            ]
            self.params = {k: v for k, v in given.items() if v is not None} | {"profile": NONE}
            if vectors:
                self.params["vectors"] = vectors
            grpc_sampling = {k: v for k, v in given.items() if v is not None}
            if s.strategy is not None:
                grpc_sampling["strategy"] = s.strategy
            self.grpc = {"profile": NONE, "sampling": grpc_sampling}
            if vectors:
                self.grpc["vectors"] = [
                    {"vector_id": v.pop("id"), **v} for v in (dict(v) for v in vectors)
                ]  # fmt: skip

    def text(self, language: str) -> str:
        messages = [{"role": "user", "content": "Hello"}]
        standard = {k: v for k, v in self.params.items() if k in _OPENAI_PARAMS}
        extra = {k: v for k, v in self.params.items() if k not in _OPENAI_PARAMS}
        if language == "curl":
            body = _shell_quoted(json.dumps({"model": "@MODEL@", "messages": messages, **self.params}))
            return f"""curl -sS "@BASE@/chat/completions" \\
  {_AUTH} \\
  -H "Content-Type: application/json" \\
  -d '{body}'"""
        if language == "python":
            lines = "".join(f"    {k}={json.dumps(v)},\n" for k, v in standard.items())
            if extra:
                lines += f"    extra_body={json.dumps(extra)},\n"
            return (TEXT["python"].split("reply = ")[0] + "reply = client.chat.completions.create(\n"
                    '    model="@MODEL@",\n    messages=[{"role": "user", "content": "Hello"}],\n' + lines
                    + ")\nprint(reply.choices[0].message.content)")  # fmt: skip
        if language == "typescript":
            lines = "".join(f"  {k}: {json.dumps(v)},\n" for k, v in standard.items())
            lines += "".join(
                f"  // @ts-expect-error: a Distillery parameter\n  {k}: {json.dumps(v)},\n" for k, v in extra.items()
            )
            head = TEXT["typescript"].split("const reply = ")[0]
            return (head + "const reply = await client.chat.completions.create({\n"
                    '  model: "@MODEL@",\n  messages: [{ role: "user", content: "Hello" }],\n' + lines
                    + "});\nconsole.log(reply.choices[0].message.content);")  # fmt: skip
        if language == "grpcurl":
            body = _shell_quoted(json.dumps({"model_id": "@MODEL@", "messages": messages, **self.grpc}))
            return TEXT["grpcurl"].replace(TEXT["grpcurl"].split("'")[1], body)
        named = f" --profile {self.profile.name}" if self.profile is not None else ""
        return TEXT["cli"] + named


def _shell_quoted(text: str) -> str:
    """``text`` to stand inside a single-quoted shell word."""
    return text.replace("'", "'\\''")
