"""A profile's sampling settings (``profiles.Sampling``) as ``model.generate`` takes them, and its stop strings.

Greedy decoding and plain sampling at a temperature are exactly ``decoding.sampling`` (as the recipes'
evaluations decode); the filters a profile sets (top-p, top-k, min-p) apply to sampling only, and a
repetition penalty to both. Stop strings: generation stops at the token that completes one (a stopping
criterion reading the tail of the new text), the answer is cut before the first one (``cut``: not included,
finish reason "stop"), and a stream holds back text that could still be the start of one (``StopGate``), so
nothing past a stop string is ever sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.common import decoding
from services.registry.profiles import GREEDY, SAMPLE, Sampling

# Tokens decoded from the end of the new text to look for a stop string: its length in characters, plus slack
# for tokens that decode to nothing on their own.
_TAIL_SLACK = 8


def is_sampled(s: Sampling) -> bool:
    return s.strategy == SAMPLE if s.strategy is not None else (s.temperature or 0) > 0


def generate_options(s: Sampling) -> dict[str, Any]:
    """``generate`` keyword arguments for the settings (not the token budget, not the stop strings)."""
    options = decoding.sampling((s.temperature or 1.0) if is_sampled(s) else 0.0)
    if is_sampled(s):
        if s.top_p is not None:
            options["top_p"] = s.top_p
        if s.top_k is not None:
            options["top_k"] = s.top_k
        if s.min_p:
            options["min_p"] = s.min_p
    if s.repetition_penalty is not None and s.repetition_penalty != 1.0:
        options["repetition_penalty"] = s.repetition_penalty
    return options


def reported(s: Sampling, budget: int) -> Sampling:
    """The settings an answer was made with, as GenerateResponse reports them: the strategy and temperature
    always, the token budget used."""
    sampled = is_sampled(s)
    return Sampling(
        strategy=SAMPLE if sampled else GREEDY, temperature=(s.temperature or 1.0) if sampled else 0.0,
        top_p=s.top_p, top_k=s.top_k, min_p=s.min_p, repetition_penalty=s.repetition_penalty, max_tokens=budget,
        stop=s.stop,
    )  # fmt: skip


def cut(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to (not including) the first stop string, and whether there was one."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def stop_criteria(tokenizer: Any, prompt_length: int, stops: Sequence[str]) -> list[Any]:
    """A transformers stopping criterion ending generation once the new text holds a stop string (none without)."""
    if not stops:
        return []
    from transformers import StoppingCriteria

    window = max(len(s) for s in stops) + _TAIL_SLACK

    class StopStrings(StoppingCriteria):  # type: ignore[misc]
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            done = []
            for row in input_ids:
                new = row[prompt_length:].tolist()
                tail = tokenizer.decode(new[-window:], skip_special_tokens=True)
                done.append(any(s in tail for s in stops))
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return [StopStrings()]


class StopGate:
    """Which streamed text may be sent: none past a stop string, and a tail that could be the start of one waits."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0
        self.closed = False

    def feed(self, piece: str) -> str:
        if self.closed:
            return ""
        self.text += piece
        upto, found = cut(self.text, self.stops)
        if found:
            self.closed = True
        else:
            upto = upto[: len(upto) - self._partial(upto)]
        if len(upto) <= self.sent:
            return ""
        delta, self.sent = upto[self.sent :], len(upto)
        return delta

    def _partial(self, text: str) -> int:
        """The length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[-size:]):
                    longest = size
                    break
        return longest
