"""An OpenAI chat completion request, checked and translated into what the engines take.

What is read: ``model``, ``messages`` (string content, or content parts: text parts joined with
a newline; one ``image_url`` part with a ``data:`` URL for an OCR model; audio and file parts are
refused), ``tools`` (``{"type": "function", "function": {name, description, parameters}}``, each
turned into a canonical tool ``{name, description, parameters}`` with the function's own key
order), ``tool_choice`` (``"none"`` offers no tools, ``"auto"`` and ``"required"`` all of them, a
named function only that one), ``response_format``, ``temperature``, ``max_tokens`` /
``max_completion_tokens``, ``n`` (1 only), ``stream`` and ``stream_options.include_usage``,
``store`` and ``metadata``; ``seed``, ``user`` and the other sampling fields are accepted and
passed on to a vLLM upstream as sent. A problem is a 400 naming the field (``param``).

Sampling (docs/optimization.md): ``temperature``, ``top_p``, ``stop`` (a string or up to 4), and the extra
body parameters ``top_k``, ``min_p``, ``repetition_penalty`` go into ``ChatCall.sampling`` only when the
request has them, so a model's profile keeps the rest (OpenAI's defaults never override it); ``profile``
(a profile's name, or "none") and ``vectors`` (``[{"name" | "id", "strength", "first_layer", "last_layer"}]``;
``[]`` attaches none) choose what the profile applies.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from services.gateway.api_errors import ApiError, invalid

ROLES = ("system", "developer", "user", "assistant", "tool")
# OpenAI's limits on stored completions' metadata.
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
PROVIDERS = ("openai", "anthropic", "google", "platform")
MAX_TOKENS = 1_000_000
MAX_STOP = 4


@dataclass
class ChatCall:
    model: str
    body: dict[str, Any]  # as sent (a vLLM upstream gets it, the model swapped)
    messages: list[dict[str, Any]]  # text messages: role, content, tool_calls, tool_call_id
    tools: list[dict[str, Any]] = field(default_factory=list)  # canonical tools offered (after tool_choice)
    temperature: float | None = None
    max_tokens: int = 0
    stream: bool = False
    include_usage: bool = False
    store: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    response_format: dict[str, Any] | None = None  # json_object or json_schema only
    image: bytes | None = None  # an image_url part's data (an OCR model reads it)
    image_prompt: str = ""  # the text of the message that holds the image
    sampling: dict[str, Any] = field(default_factory=dict)  # registry Sampling fields the request sets
    profile: str = ""  # "" the model's default profile, "none" no profile, else a profile's name
    vectors: list[dict[str, Any]] | None = None  # AttachedVector fields; None: the profile's

    @property
    def proxy_provider(self) -> str | None:
        """``openai`` for ``openai:gpt-4.1-mini`` (proxy mode), else None."""
        provider, sep, rest = self.model.partition(":")
        return provider if sep and rest and provider in PROVIDERS else None

    def traffic_request(self) -> dict[str, Any]:
        """What captured traffic keeps of the request: the messages and tools exactly as sent."""
        return {"messages": self.body["messages"], "tools": self.body.get("tools") or []}


def parse_chat(body: Any) -> ChatCall:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid("`model` is required: a model id (mdl_...), a model name, or provider:model", "model")
    call = ChatCall(model=model.strip(), body=body, messages=[])
    provider, sep, _ = call.model.partition(":")
    if sep and call.proxy_provider is None:
        raise invalid(f"unknown provider {provider!r} in {call.model!r}: proxy mode takes {', '.join(PROVIDERS)} "
                      "(e.g. openai:gpt-4.1-mini)", "model")  # fmt: skip
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise invalid("`messages` must be a non-empty list of chat messages", "messages")
    for i, message in enumerate(raw_messages):
        call.messages.append(_message(call, message, f"messages[{i}]"))
    offered = _tools(body.get("tools"))
    call.tools = _chosen(offered, body.get("tool_choice"))
    call.temperature = _number(body, "temperature", 0.0, 2.0)
    call.max_tokens = _max_tokens(body)
    n = body.get("n")
    if n is not None and n != 1:
        raise invalid("only n=1 is served: ask again for another answer", "n")
    call.stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise invalid("`stream_options` must be an object", "stream_options")
        call.include_usage = bool(options.get("include_usage"))
    call.store = _bool(body, "store")
    call.metadata = _metadata(body.get("metadata"))
    call.response_format = _response_format(body.get("response_format"))
    call.sampling = _sampling(body, call.temperature)
    call.profile = _profile(body.get("profile"))
    call.vectors = _vectors(body.get("vectors"))
    return call


def _sampling(body: dict[str, Any], temperature: float | None) -> dict[str, Any]:
    """The registry's Sampling fields the request sets (none of OpenAI's defaults)."""
    sampling: dict[str, Any] = {}
    if temperature is not None:
        sampling["temperature"] = temperature
    for name, low, high in (("top_p", 0.0, 1.0), ("min_p", 0.0, 1.0), ("repetition_penalty", 0.0, 2.0)):
        value = _number(body, name, low, high)
        if value is not None:
            sampling[name] = value
    top_k = body.get("top_k")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < -1:
            raise invalid("`top_k` must be a whole number: 0 (or -1) for no cut, else the tokens kept", "top_k")
        sampling["top_k"] = max(top_k, 0)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > MAX_STOP or not all(isinstance(s, str) and s for s in stops):
            raise invalid(f"`stop` must be a string or a list of at most {MAX_STOP} non-empty strings", "stop")
        sampling["stop"] = stops
    return sampling


def _profile(raw: Any) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str) or not raw.strip():
        raise invalid('`profile` must be a profile\'s name, or "none" for no profile', "profile")
    return raw.strip()


def _vectors(raw: Any) -> list[dict[str, Any]] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        shape = '{"name" or "id", "strength", "first_layer", "last_layer"}'
        raise invalid(f"`vectors` must be a list of {shape}", "vectors")
    vectors = []
    for i, item in enumerate(raw):
        ref = item.get("id") or item.get("name") if isinstance(item, dict) else None
        strength = item.get("strength", 1.0) if isinstance(item, dict) else None
        if not isinstance(ref, str) or isinstance(strength, bool) or not isinstance(strength, int | float):
            raise invalid(f'vectors[{i}] must be {{"name" or "id": ..., "strength": a number}}', f"vectors[{i}]")
        layers = [item.get(k, 0) for k in ("first_layer", "last_layer")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in layers):
            raise invalid(f"vectors[{i}].first_layer and last_layer must be layer numbers (0-based)", f"vectors[{i}]")
        vectors.append({"vector_id": ref, "strength": float(strength), "first_layer": layers[0],
                        "last_layer": layers[1]})  # fmt: skip
    return vectors


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(f"`{name}` must be true or false", name)
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise invalid(f"`{name}` must be a number from {low:g} to {high:g}", name)
    return float(value)


def _max_tokens(body: dict[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
            raise invalid(f"`{name}` must be a whole number of tokens, at least 1", name)
        return value
    return 0


def _message(call: ChatCall, message: Any, where: str) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise invalid(f"{where} must be an object with a role and content", where)
    role = message.get("role")
    if role not in ROLES:
        raise invalid(f"{where}.role must be one of {', '.join(ROLES)}", f"{where}.role")
    out: dict[str, Any] = {"role": "system" if role == "developer" else role}
    out["content"] = _content(call, message.get("content"), f"{where}.content")
    if role == "assistant" and message.get("tool_calls"):
        out["tool_calls"] = _tool_calls(message["tool_calls"], f"{where}.tool_calls")
    elif out["content"] is None:
        raise invalid(f"{where}.content is required", f"{where}.content")
    if role == "tool":
        tool_call_id = message.get("tool_call_id")
        if not isinstance(tool_call_id, str) or not tool_call_id:
            raise invalid(f"{where}.tool_call_id is required for a tool message", f"{where}.tool_call_id")
        out["tool_call_id"] = tool_call_id
    out["content"] = out["content"] or ""
    return out


def _content(call: ChatCall, content: Any, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"{where} must be a string or a list of content parts", where)
    texts: list[str] = []
    image: bytes | None = None
    for j, part in enumerate(content):
        here = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            image = _image(part.get("image_url"), here)
        elif kind in ("input_audio", "audio", "file"):
            raise invalid(
                f"{here}: {kind} content parts are not served here: transcribe a clip with "
                "POST /v1/audio/transcriptions and send its text",
                here,
            )
        else:
            raise invalid(f"{here} must be a text or image_url content part", here)
    text = "\n".join(texts)
    if image is not None:
        if call.image is not None:
            raise invalid("one image per request: an OCR model reads one image at a time", here)
        call.image, call.image_prompt = image, text
    return text


def _image(image_url: Any, where: str) -> bytes:
    url = image_url.get("url") if isinstance(image_url, dict) else None
    if not isinstance(url, str) or not url.startswith("data:"):
        raise invalid(
            f"{where}.image_url.url must be a data: URL (data:image/png;base64,...); the gateway fetches no URLs",
            f"{where}.image_url.url",
        )
    header, comma, data = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise invalid(f"{where}.image_url.url must be a base64 data: URL", f"{where}.image_url.url")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{where}.image_url.url is not valid base64", f"{where}.image_url.url") from None


def _tool_calls(raw: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise invalid(f"{where} must be a list", where)
    calls = []
    for k, item in enumerate(raw):
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            shape = "{id, type: function, function: {name, arguments}}"
            raise invalid(f"{where}[{k}] must be {shape}", f"{where}[{k}]")
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            raise invalid(f"{where}[{k}].function.arguments must be JSON text", f"{where}[{k}].function.arguments")
        calls.append({"id": str(item.get("id") or f"call_{k + 1}"), "name": function["name"], "arguments": arguments})
    return calls


def _tools(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid("`tools` must be a list of function tools", "tools")
    tools = []
    for i, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise invalid(
                f'tools[{i}] must be {{"type": "function", "function": {{"name", "description", "parameters"}}}}',
                f"tools[{i}]",
            )
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise invalid(f"tools[{i}].function.parameters must be a JSON Schema object", f"tools[{i}].function")
        # The canonical tool, in the function's own key order (a model renders its tools as written).
        canonical = {k: v for k, v in function.items() if k in ("name", "description", "parameters")}
        canonical.setdefault("description", "")
        canonical.setdefault("parameters", {"type": "object", "properties": {}})
        tools.append(canonical)
    return tools


def _chosen(tools: list[dict[str, Any]], choice: Any) -> list[dict[str, Any]]:
    if choice is None or choice in ("auto", "required"):
        return tools
    if choice == "none":
        return []
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise invalid('`tool_choice` must be "none", "auto", "required" or {"type": "function", ...}', "tool_choice")
    chosen = [tool for tool in tools if tool["name"] == name]
    if not chosen:
        raise invalid(f"tool_choice names function {name!r}, which is not in `tools`", "tool_choice")
    return chosen


def _metadata(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_METADATA_PAIRS:
        raise invalid(f"`metadata` must be an object of at most {MAX_METADATA_PAIRS} string pairs", "metadata")
    for key, value in raw.items():
        if not isinstance(value, str) or len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise invalid(
                f"metadata {key[:64]!r}: keys are at most {MAX_METADATA_KEY} characters and values strings of at "
                f"most {MAX_METADATA_VALUE}",
                "metadata",
            )
    return dict(raw)


def _response_format(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return raw
    if kind == "json_schema" and isinstance(raw.get("json_schema"), dict):
        return raw
    raise invalid('`response_format` must be {"type": "text" | "json_object" | "json_schema", ...}', "response_format")


def response_schema(call: ChatCall) -> str:
    """The JSON Schema a json_schema response_format asks for, as JSON text ("" for none)."""
    if call.response_format and call.response_format["type"] == "json_schema":
        return json.dumps(call.response_format["json_schema"].get("schema", {}))
    if call.response_format:
        return json.dumps({"type": "object"})
    return ""


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over {limit // (1024 * 1024)} MiB", "invalid_request_error")
