"""What answers a chat request: one interface, an engine per deployment kind.

- ``LocalEngine`` (Deployment.engine "local"): the registry's transformers engine over gRPC
  (Generate, GenerateStream, ReadImage for an image part). It has no constrained decoding, so a
  ``response_format`` of json_object / json_schema is refused (400, param ``response_format``); it
  cannot force a call either, so ``tool_choice: "required"`` offers the tools and the model decides.
- ``VllmEngine`` (Deployment.engine "vllm", ``services/gateway/vllm.py``): an OpenAI-compatible
  vLLM upstream with multi-LoRA.
- ``ProxyEngine`` (a model "<provider>:<model>"): the teacher's Complete, with the tenant's own
  provider key, which stays in the teacher. A streamed proxy answer comes as one chunk.

``stream`` yields content deltas (str) and then the whole answer (``Answer``) last.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, Protocol

from distillery.registry.v1 import registry_pb2
from distillery.teacher.v1 import teacher_pb2
from services.gateway.answers import Answer, ToolCallOut
from services.gateway.api_errors import invalid
from services.gateway.chat_request import ChatCall, response_schema
from services.gateway.peers import Peers

StreamEvent = str | Answer


class Engine(Protocol):
    def check(self, call: ChatCall) -> None:
        """Refuse (ApiError) what this engine cannot serve, before anything is answered."""

    async def complete(self, call: ChatCall) -> Answer: ...

    def stream(self, call: ChatCall) -> AsyncGenerator[StreamEvent, None]: ...


def answer_of(reply: registry_pb2.GenerateResponse) -> Answer:
    calls = [ToolCallOut(c.id, c.name, c.arguments_json) for c in reply.message.tool_calls]
    return Answer(reply.message.content, calls, reply.finish_reason or "stop", reply.prompt_tokens,
                  reply.completion_tokens)  # fmt: skip


class LocalEngine:
    def __init__(self, peers: Peers, model_id: str, api_key: str) -> None:
        self.peers, self.model_id, self.api_key = peers, model_id, api_key

    def check(self, call: ChatCall) -> None:
        if call.response_format is not None:
            raise invalid(
                "response_format json_object/json_schema needs constrained decoding, which the local engine does "
                "not have: deploy on vLLM (`distillery models deploy MODEL --engine vllm`) or ask for text",
                "response_format",
            )

    def request(self, call: ChatCall) -> registry_pb2.GenerateRequest:
        messages = [
            registry_pb2.ChatMessage(
                role=m["role"], content=m["content"], tool_call_id=m.get("tool_call_id", ""),
                tool_calls=[registry_pb2.ToolCall(id=c["id"], name=c["name"], arguments_json=c["arguments"])
                            for c in m.get("tool_calls", [])],
            )
            for m in call.messages
        ]  # fmt: skip
        # Sampling: only what the request set, over the model's profile (temperature there too: 0 is greedy).
        return registry_pb2.GenerateRequest(
            model_id=self.model_id, messages=messages, max_new_tokens=call.max_tokens,
            tools_json=[json.dumps(t, ensure_ascii=False) for t in call.tools], profile=call.profile,
            sampling=registry_pb2.Sampling(**call.sampling), no_vectors=call.vectors == [],
            vectors=[registry_pb2.AttachedVector(**v) for v in call.vectors or []],
        )  # fmt: skip

    async def _read_image(self, call: ChatCall) -> Answer:
        assert call.image is not None
        request = registry_pb2.ReadImageRequest(model_id=self.model_id, image=call.image, prompt=call.image_prompt)
        reply = await self.peers.answer("ReadImage", request, self.api_key)
        return Answer(reply.text)

    async def complete(self, call: ChatCall) -> Answer:
        if call.image is not None:
            return await self._read_image(call)
        return answer_of(await self.peers.answer("Generate", self.request(call), self.api_key))

    async def stream(self, call: ChatCall) -> AsyncGenerator[StreamEvent, None]:
        if call.image is not None:
            yield await self._read_image(call)
            return
        async with aclosing(self.peers.generate_stream(self.request(call), self.api_key)) as chunks:
            async for chunk in chunks:  # closed with this stream: a client gone cancels the registry's call
                if chunk.HasField("final"):
                    yield answer_of(chunk.final)
                    return
                if chunk.delta:
                    yield chunk.delta


class ProxyEngine:
    def __init__(self, peers: Peers, api_key: str) -> None:
        self.peers, self.api_key = peers, api_key

    def check(self, call: ChatCall) -> None:
        if call.image is not None:
            raise invalid("image content parts are not passed on in proxy mode", "messages")

    async def complete(self, call: ChatCall) -> Answer:
        request = teacher_pb2.CompleteRequest(
            model=call.model, messages_json=json.dumps(openai_messages(call.messages), ensure_ascii=False),
            tools_json=[json.dumps(t, ensure_ascii=False) for t in call.tools], max_tokens=call.max_tokens,
            response_schema_json=response_schema(call),
        )  # fmt: skip
        if call.temperature is not None:
            request.temperature = call.temperature
        reply = await self.peers.complete(request, self.api_key)
        calls = [ToolCallOut(c.id, c.name, c.arguments_json) for c in reply.tool_calls]
        return Answer(reply.content, calls, reply.finish_reason or "stop", reply.prompt_tokens,
                      reply.completion_tokens)  # fmt: skip

    async def stream(self, call: ChatCall) -> AsyncGenerator[StreamEvent, None]:
        yield await self.complete(call)


def openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checked text messages in OpenAI's shape again (content text, function tool calls)."""
    out = []
    for m in messages:
        message: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            message["tool_calls"] = [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in m["tool_calls"]
            ]
        if m.get("tool_call_id"):
            message["tool_call_id"] = m["tool_call_id"]
        out.append(message)
    return out
