"""GenerateStream: Generate's answer as it is written.

The same checks, model loading and prompt as ``Generate`` (``generate.py``): the model writes its answer
in a worker thread (``model.generate`` with transformers' ``TextIteratorStreamer``), and the text it
writes is handed on as content deltas; the last item is the whole answer (a ``generate.Reply``), read
exactly as ``Generate`` reads it, so the final chunk equals what ``Generate`` returns.

With tools offered, text that could still be the start of a tool call is held back (``ContentGate``):
nothing streams until the answer is known not to begin with ``<tool_call>``, a tail that could be the
start of the tag waits for the next piece, and nothing streams after the tag. A plain answer's deltas
join to exactly its content; a tool call arrives whole in the final answer. (A text that parses as no
answer at all, a stray ``</tool_call>`` say, has streamed what came before it; its final answer, with no
content and the invalid call, is what it said.)

A client that goes away stops generation at the next token (a stopping criterion reads a flag). A profile's
stop strings (``sampling.StopGate``) hold back text that could begin one and end the stream before it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from services.common import decoding
from services.common.tool_calls import OPEN
from services.registry import sampling as sampler
from services.registry.generate import Generator, Loaded, Reply, plain_settings, prompt_ids, steered
from services.registry.models import Model
from services.registry.profiles import Sampling

log = logging.getLogger(__name__)


class ContentGate:
    """Which of a model's text may stream as content: all of it without tools; with tools, only text known
    not to be (the start of) a tool call."""

    def __init__(self, tools: bool) -> None:
        self.tools = tools
        self.text = ""  # everything written so far
        self.sent = ""  # what has streamed as content
        self.closed = False  # a tool call began: nothing more streams

    def feed(self, piece: str) -> str:
        """Take the next piece of text; returns the content that may stream now ("" for none)."""
        self.text += piece
        if not self.tools:
            return self._send(self.text)
        if self.closed:
            return ""
        if OPEN in self.text:
            self.closed = True
            return ""
        start = self.text.lstrip()
        if not start or OPEN.startswith(start):  # it could still begin a tool call
            return ""
        return self._send(self.text[: len(self.text) - _partial_open(self.text)])

    def finish(self, answer: decoding.ToolAnswer) -> str:
        """The content not streamed yet of the whole answer ("" for tool calls, or where the answer's content
        does not continue what streamed)."""
        if answer.calls or answer.invalid_raw:
            return ""
        if not answer.content.startswith(self.sent):
            log.warning("streamed text is not a prefix of the answer's content: the final chunk holds the answer")
            return ""
        return self._send(answer.content)

    def _send(self, upto: str) -> str:
        if not upto.startswith(self.sent) or len(upto) <= len(self.sent):
            return ""
        delta, self.sent = upto[len(self.sent) :], upto
        return delta


def _partial_open(text: str) -> int:
    """The length of the longest tail of ``text`` that is a proper prefix of ``<tool_call>``."""
    for size in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-size:]):
            return size
    return 0


async def stream(
    generator: Generator,
    model: Model,
    messages: Sequence[Mapping[str, Any]],
    max_new_tokens: int = 0,
    temperature: float = 0.0,
    tools: Sequence[Mapping[str, Any]] = (),
    settings: Sampling | None = None,
    steering: Sequence[Any] = (),
) -> AsyncIterator[str | Reply]:
    """Content deltas (str) as the model writes them, then the whole answer (a ``Reply``), as ``Generate``."""
    loaded = await generator.text_model(model, messages, max_new_tokens, temperature)
    chosen = settings or plain_settings(max_new_tokens, temperature)
    budget = chosen.max_tokens or loaded.max_new_tokens
    started = time.perf_counter()
    prompt = await asyncio.to_thread(prompt_ids, loaded, messages, tools)
    writing = _Writing(loaded, prompt, budget, chosen, asyncio.get_running_loop(), steering)
    gate, stops = ContentGate(bool(tools)), sampler.StopGate(chosen.stop)
    try:
        writing.thread.start()
        while (piece := await writing.pieces.get()) is not None:
            if delta := gate.feed(stops.feed(piece)):
                yield delta
        await asyncio.to_thread(writing.thread.join)
        if writing.error is not None:
            raise writing.error
        new_ids = writing.output[len(prompt) :]
        text, finish, generated = decoding.completion(loaded.tokenizer, new_ids, writing.ends)
        text, stopped = sampler.cut(text, chosen.stop)
        finish = decoding.STOP if stopped else finish
        answer = decoding.tool_answer(text, finish) if tools else decoding.ToolAnswer(text, finish_reason=finish)
        if tail := gate.finish(answer):
            yield tail
        yield Reply(
            answer=answer,
            prompt_ids=prompt,
            prompt_tokens=len(prompt),
            completion_tokens=generated,
            latency_ms=(time.perf_counter() - started) * 1000,
            sampling=sampler.reported(chosen, budget),
        )
    finally:
        writing.stop.set()  # the client went away, or it is done: stop at the next token


class _Writing:
    """``model.generate`` in a worker thread, its text handed to the event loop by a ``TextIteratorStreamer``
    whose finished pieces go on an ``asyncio.Queue`` (None: the end), so no thread of the loop's executor waits
    on a token."""

    def __init__(
        self,
        loaded: Loaded,
        prompt: list[int],
        max_new_tokens: int,
        settings: Sampling,
        loop: asyncio.AbstractEventLoop,
        steering: Sequence[Any] = (),
    ) -> None:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        self.loaded = loaded
        self.stop = threading.Event()
        self.ends = decoding.end_ids(loaded.model, loaded.tokenizer)
        self.output: list[int] = []
        self.error: BaseException | None = None
        self.pieces: asyncio.Queue[str | None] = asyncio.Queue()
        pieces, stop = self.pieces, self.stop

        class Streamer(TextIteratorStreamer):  # type: ignore[misc]
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                try:
                    if text:
                        loop.call_soon_threadsafe(pieces.put_nowait, text)
                    if stream_end:
                        loop.call_soon_threadsafe(pieces.put_nowait, None)
                except RuntimeError:  # the loop closed (the server stopped): no one is reading
                    stop.set()

        self.streamer = Streamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)

        class Stopped(StoppingCriteria):  # type: ignore[misc]
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                import torch

                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        self.criteria = StoppingCriteriaList(
            [Stopped(), *sampler.stop_criteria(loaded.tokenizer, len(prompt), settings.stop)]
        )
        self.arguments = (prompt, max_new_tokens, settings)
        self.steering = steering
        self.thread = threading.Thread(target=self._run, name="generate-stream", daemon=True)

    def _run(self) -> None:
        import torch

        prompt, max_new_tokens, settings = self.arguments
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        try:
            input_ids = torch.tensor([prompt], device=model.device)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            with steered(self.loaded, self.steering), torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                    pad_token_id=pad, eos_token_id=self.ends, streamer=self.streamer, stopping_criteria=self.criteria,
                    **sampler.generate_options(settings),
                )  # fmt: skip
            self.output = output[0].tolist()
        except BaseException as err:  # handed to the caller, which raises it
            self.error = err
            self.streamer.end()  # the reader must not wait for text that will not come (it ends with None)
