"""API-ready request snippets for calling a model, as printed by `distillery models snippet MODEL --lang LANG`.

- curl, python (the official ``openai`` SDK), typescript (the ``openai`` npm package): the gateway's
  OpenAI-compatible endpoint (the registry's ``gateway_url`` + "/v1"; where the registry does not know it,
  ``$DISTILLERY_GATEWAY_URL`` + "/v1"). A text model answers chat completions; a speech model (path
  finetune-asr) transcribes a clip at ``/v1/audio/transcriptions``; an OCR model (finetune-ocr) reads an image
  sent as an ``image_url`` content part (a base64 data: URL). The model must be deployed
  (`distillery models deploy MODEL`) for the endpoint to serve it.
- grpcurl: the registry's own runtime-testing RPC (Generate, Transcribe or ReadImage) through its reflection.
- cli: the same through `distillery models generate|transcribe|read`.

Every snippet reads the API key from ``$DISTILLERY_API_KEY``; none holds it. tests/test_snippets.py runs them.
"""

from __future__ import annotations

from services.common.errors import InvalidArgument

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
    model_id: str, language: str = "", *, gateway_url: str = "", speech: bool = False, ocr: bool = False
) -> dict[str, str]:
    """The snippets for ``model_id`` (all, or the one ``language``); ``speech``: a speech model's; ``ocr``: an
    OCR model's."""
    if language and language not in LANGUAGES:
        raise InvalidArgument(f"no snippet for {language!r}: use one of {', '.join(LANGUAGES)}", field="language")
    templates = OCR if ocr else SPEECH if speech else TEXT
    values = {"@MODEL@": model_id, **base_urls(gateway_url)}
    snippets = {}
    for name in [language] if language else LANGUAGES:
        code = templates[name]
        for placeholder in ("@BASE_PY@", "@BASE_TS@", "@BASE@", "@MODEL@"):
            code = code.replace(placeholder, values[placeholder])
        snippets[name] = code
    return snippets
