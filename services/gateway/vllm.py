"""The vLLM engine: a deployment served by an OpenAI-compatible vLLM upstream with multi-LoRA.

A LoRA deployment names its adapter in the upstream's shared pool (``Deployment.adapter_name``):
the request goes with ``"model": adapter_name``. The adapter is loaded by name on first use
with vLLM's dynamic LoRA API (``POST {root}/v1/load_lora_adapter {"lora_name", "lora_path"}``;
the upstream runs with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and reads ``lora_path``, the
model's artifact_uri), remembered, and loaded again when the upstream answers that the model
does not exist (it restarted). A full fine-tune has an upstream of its own (adapter_name ""):
the request goes with the model that upstream serves (its ``/v1/models``).

The body goes on as the client sent it (tools, tool_choice, response_format, seed, ...) less
``store``, ``metadata``, ``profile`` and ``vectors``; the model's profile (``apply_profile``: the one the
request names, else "default"; read with the registry's GetProfile) fills in the sampling parameters the
request leaves out. vLLM cannot apply steering vectors: a request whose profile or own ``vectors`` attach
any is refused (400 ``vectors_not_supported``, naming the local engine) rather than answered unsteered.
Upstream errors: a 4xx is passed on with the upstream's message and
status; a 5xx is 502 and an unreachable upstream 503, both naming the deployment. The upstream's
key (DISTILLERY_VLLM_API_KEY) is sent as a bearer and never shown.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from distillery.registry.v1 import registry_pb2
from services.common.logs import redact
from services.gateway.answers import Answer, ToolCallOut
from services.gateway.api_errors import ApiError
from services.gateway.chat_request import ChatCall
from services.gateway.engines import StreamEvent
from services.gateway.peers import Peers

NOT_PASSED_ON = ("store", "metadata", "model", "profile", "vectors")
MAX_UPSTREAM_MESSAGE = 500


def upstream_root(upstream: str) -> str:
    """``http://host:port`` of an upstream given with or without its ``/v1``."""
    root = upstream.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


class VllmPool:
    """The HTTP session to the upstreams and what each one has loaded; one per gateway."""

    def __init__(self, api_key: str, timeout_s: float) -> None:
        self.api_key = api_key  # sent as the bearer and scrubbed from upstream messages; never shown
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=5.0)
        self._session: aiohttp.ClientSession | None = None
        self.loaded: set[tuple[str, str]] = set()  # (upstream root, adapter name)
        self._served: dict[str, str] = {}  # upstream root -> the model it serves (full fine-tunes)
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def ensure_adapter(self, deployment: registry_pb2.Deployment, again: bool = False) -> None:
        root = upstream_root(deployment.upstream)
        key = (root, deployment.adapter_name)
        if again:
            self.loaded.discard(key)
        async with self._locks.setdefault(key, asyncio.Lock()):
            if key in self.loaded:
                return
            body = {"lora_name": deployment.adapter_name, "lora_path": deployment.artifact_uri}
            url, headers = f"{root}/v1/load_lora_adapter", self.headers()
            posted = self.session().post(url, json=body, headers=headers)
            async with _calling(deployment, "load its adapter"), posted as r:
                text = await r.text()
            if r.status >= 400 and "already" not in text.lower():
                said = _short(text, self.api_key)
                raise ApiError(502, f"the vLLM deployment of {deployment.model_id} could not load its adapter "
                               f"({r.status}): {said}", "server_error", None, "upstream_error")  # fmt: skip
            self.loaded.add(key)

    async def served_model(self, deployment: registry_pb2.Deployment) -> str:
        root = upstream_root(deployment.upstream)
        if root not in self._served:
            url, headers = f"{root}/v1/models", self.headers()
            async with _calling(deployment, "list its models"), self.session().get(url, headers=headers) as r:
                data = await r.json(content_type=None) if r.status < 400 else {}
            models = data.get("data") if isinstance(data, dict) else None
            if not models:
                raise ApiError(502, f"the vLLM deployment of {deployment.model_id} serves no model", "server_error")
            self._served[root] = str(models[0]["id"])
        return self._served[root]


@asynccontextmanager
async def _calling(deployment: registry_pb2.Deployment, what: str) -> AsyncIterator[None]:
    """Turns the upstream being unreachable or slow into a 503 naming the deployment."""
    try:
        yield
    except (aiohttp.ClientError, TimeoutError) as err:
        raise ApiError(
            503, f"the vLLM deployment of {deployment.model_id} is unreachable ({type(err).__name__}) when asked "
            f"to {what}; try again shortly", "server_error", None, "upstream_unavailable",
        ) from None  # fmt: skip


def _short(text: str, secret: str = "") -> str:
    """An upstream's message as it may be shown: its key and anything shaped like a key removed, cut short."""
    if secret:
        text = text.replace(secret, "[REDACTED]")
    return redact(text.strip())[:MAX_UPSTREAM_MESSAGE]


def upstream_error(deployment: registry_pb2.Deployment, status: int, text: str, secret: str = "") -> ApiError:
    error: Any = {}
    try:
        error = json.loads(text)
        error = error.get("error", error) if isinstance(error, dict) else {}
    except json.JSONDecodeError:
        pass
    error = error if isinstance(error, dict) else {}
    message = str(error["message"]) if isinstance(error.get("message"), str) else text
    if status < 500:
        param = error.get("param") if isinstance(error.get("param"), str) else None
        return ApiError(status, _short(message, secret), "invalid_request_error", param)
    return ApiError(502, f"the vLLM deployment of {deployment.model_id} failed ({status}): {_short(message, secret)}",
                    "server_error", None, "upstream_error")  # fmt: skip


def _model_missing(status: int, text: str) -> bool:
    return status == 404 or (status == 400 and "does not exist" in text)


class VllmEngine:
    def __init__(self, pool: VllmPool, deployment: registry_pb2.Deployment) -> None:
        self.pool, self.deployment = pool, deployment
        self.defaults: dict[str, Any] = {}  # the profile's sampling, as vLLM's request parameters

    def check(self, call: ChatCall) -> None:
        pass

    async def apply_profile(self, peers: Peers, api_key: str, call: ChatCall) -> None:
        """Read the profile the request names ("" the model's default, when it has one; "none" no profile): its
        sampling fills what the request leaves out; vectors (the profile's, or the request's) are refused."""
        profile = None
        if call.profile != "none":
            request = registry_pb2.GetProfileRequest(model_id=self.deployment.model_id, name=call.profile or "default")
            try:
                profile = await peers.registry("GetProfile", request, api_key)
            except ApiError as err:
                if err.status != 404 or call.profile:
                    raise
        attached = call.vectors if call.vectors is not None else list(profile.vectors) if profile else []
        if attached:
            where = "the request's `vectors`" if call.vectors else f"profile {profile.name!r}" if profile else ""
            raise ApiError(
                400, f"{where} attaches steering vectors, which the vLLM engine cannot apply: deploy the model on "
                f"the local engine (`distillery models deploy {self.deployment.model_id} --engine local`), or ask "
                'with "vectors": [] (or another profile, or "profile": "none")',
                "invalid_request_error", "vectors", "vectors_not_supported",
            )  # fmt: skip
        if profile is not None:
            self.defaults = _vllm_sampling(profile.sampling)

    async def _body(self, call: ChatCall, stream: bool) -> dict[str, Any]:
        if self.deployment.adapter_name:
            await self.pool.ensure_adapter(self.deployment)
            model = self.deployment.adapter_name
        else:
            model = await self.pool.served_model(self.deployment)
        body = {k: v for k, v in call.body.items() if k not in NOT_PASSED_ON}
        budget = {"max_tokens"} if "max_completion_tokens" in body else set()
        body = {**{k: v for k, v in self.defaults.items() if k not in budget}, "model": model, **body, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def _post(self, call: ChatCall, stream: bool) -> aiohttp.ClientResponse:
        """The upstream's response (status < 400); the adapter loaded again once if it was forgotten."""
        url = f"{upstream_root(self.deployment.upstream)}/v1/chat/completions"
        for attempt in range(2):
            body = await self._body(call, stream)
            async with _calling(self.deployment, "answer"):
                response = await self.pool.session().post(url, json=body, headers=self.pool.headers())
                if response.status < 400:
                    return response
                text = await response.text()
            response.release()
            if attempt == 0 and self.deployment.adapter_name and _model_missing(response.status, text):
                await self.pool.ensure_adapter(self.deployment, again=True)
                continue
            raise upstream_error(self.deployment, response.status, text, self.pool.api_key)
        raise AssertionError("unreachable")

    async def complete(self, call: ChatCall) -> Answer:
        response = await self._post(call, stream=False)
        async with _calling(self.deployment, "answer"), response:
            data = await response.json(content_type=None)
        choice = (data.get("choices") or [{}])[0]
        message, usage = choice.get("message") or {}, data.get("usage") or {}
        calls = [
            ToolCallOut(c.get("id") or f"call_{i + 1}", c["function"]["name"], c["function"].get("arguments") or "{}")
            for i, c in enumerate(message.get("tool_calls") or [])
        ]
        return Answer(message.get("content") or "", calls, choice.get("finish_reason") or "stop",
                      int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))  # fmt: skip

    async def stream(self, call: ChatCall) -> AsyncGenerator[StreamEvent, None]:
        response = await self._post(call, stream=True)
        content: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish, usage = "stop", dict[str, Any]()
        async with _calling(self.deployment, "answer"), response:
            async for raw in response.content:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data:") :])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    finish = choice.get("finish_reason") or finish
                    for part in delta.get("tool_calls") or []:
                        into = calls.setdefault(int(part.get("index", 0)), {"id": "", "name": "", "arguments": ""})
                        into["id"] = part.get("id") or into["id"]
                        function = part.get("function") or {}
                        into["name"] += function.get("name") or ""
                        into["arguments"] += function.get("arguments") or ""
                    if delta.get("content"):
                        content.append(delta["content"])
                        yield delta["content"]
        tool_calls = [ToolCallOut(c["id"] or f"call_{i + 1}", c["name"], c["arguments"] or "{}")
                      for i, c in sorted(calls.items())]  # fmt: skip
        yield Answer("".join(content), tool_calls, finish, int(usage.get("prompt_tokens", 0)),
                     int(usage.get("completion_tokens", 0)))  # fmt: skip


def _vllm_sampling(sampling: registry_pb2.Sampling) -> dict[str, Any]:
    """A profile's sampling as vLLM's OpenAI request parameters (greedy: temperature 0)."""
    out: dict[str, Any] = {
        name: getattr(sampling, name)
        for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens")
        if sampling.HasField(name)
    }
    if sampling.HasField("strategy"):
        out["temperature"] = 0.0 if sampling.strategy == "greedy" else out.get("temperature", 1.0)
    if sampling.stop:
        out["stop"] = list(sampling.stop)
    return out
