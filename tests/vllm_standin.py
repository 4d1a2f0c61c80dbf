"""A stand-in for a vLLM OpenAI-compatible server with dynamic LoRA, at the HTTP wire, for tests.

    GET  /v1/models                  the base model it serves (SERVED_MODEL)
    POST /v1/load_lora_adapter       {"lora_name", "lora_path"}: 200 "Success: ...", or 400 "... has already
                                     been loaded." as vLLM answers (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)
    POST /v1/chat/completions        with "model" the served model or a loaded adapter's name, else 404
                                     NotFoundError "The model `x` does not exist." as vLLM answers; stream
                                     too (word chunks, then a usage chunk with stream_options.include_usage)
    /dedicated/{name}/v1/...         a dedicated upstream (a full fine-tune's): it serves "{name}-served"

It answers ``f"{model}|{last user text}"``, or the next ``script``ed behaviour:
``{"status": 400, "message": "..."}`` / ``{"status": 500}`` (vLLM's error body), ``{"answer": "text"}``,
``{"tool_call": (name, arguments JSON text)}``. Every request is recorded (path, body, the bearer key);
``restart()`` forgets the loaded adapters, as a restarted vLLM does. aiohttp on its own loop in a thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

SERVED_MODEL = "base-model"


@dataclass
class Request:
    path: str
    body: Any
    api_key: str


class VllmStandin:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.loaded: dict[str, str] = {}  # adapter name -> lora_path
        self._script: deque[dict[str, Any]] = deque()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VllmStandin:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._serve())
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        if not ready.wait(10):
            raise RuntimeError("the vLLM stand-in did not start")
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def reset(self) -> None:
        self.requests.clear()
        self.loaded.clear()
        self._script.clear()

    def restart(self) -> None:
        self.loaded.clear()

    def script(self, *behaviours: dict[str, Any]) -> None:
        self._script.extend(behaviours)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/load_lora_adapter", self._load)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/dedicated/{name}/v1/models", self._models)
        app.router.add_post("/dedicated/{name}/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def _record(self, request: web.Request, body: Any) -> None:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.requests.append(Request(request.path, body, key))

    async def _models(self, request: web.Request) -> web.Response:
        self._record(request, None)
        return web.json_response({"object": "list", "data": [{"id": _served(request), "object": "model"}]})

    async def _load(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(request, body)
        name = body["lora_name"]
        if name in self.loaded:
            return _error(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
        self.loaded[name] = body["lora_path"]
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self._record(request, body)
        model = body.get("model")
        if model != _served(request) and model not in self.loaded:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        behaviour = self._script.popleft() if self._script else {}
        if "status" in behaviour:
            status = behaviour["status"]
            message = behaviour.get("message", "Internal server error")
            return _error(status, message, "BadRequestError" if status < 500 else "InternalServerError")
        user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        text = behaviour.get("answer", f"{model}|{user}")
        calls = []
        if "tool_call" in behaviour:
            name, arguments = behaviour["tool_call"]
            text = ""
            calls = [{"id": "chatcmpl-tool-1", "type": "function", "function": {"name": name, "arguments": arguments}}]
        usage = {"prompt_tokens": 7, "completion_tokens": len(text.split()) or 1}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        finish = "tool_calls" if calls else "stop"
        if not body.get("stream"):
            message = {"role": "assistant", "content": text or None, "tool_calls": calls}
            return web.json_response({
                "id": "chatcmpl-standin", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage,
            })  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> None:
            chunk = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": 0, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}  # fmt: skip
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        words = text.split(" ")
        for i, word in enumerate(words):
            await send({"content": word if i == 0 else " " + word})
        for i, call in enumerate(calls):  # vLLM sends the name first, then the arguments in pieces
            await send({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                        "function": {"name": call["function"]["name"], "arguments": ""}}]})  # fmt: skip
            arguments = call["function"]["arguments"]
            for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
                await send({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
        await send({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _served(request: web.Request) -> str:
    """The base model this (pool or dedicated) upstream serves."""
    name = request.match_info.get("name")
    return f"{name}-served" if name else SERVED_MODEL


def _error(status: int, message: str, kind: str) -> web.Response:
    """vLLM's error body."""
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": status}},
                             status=status)  # fmt: skip
