"""Decoding as a recipe evaluates a model and as ``Generate`` answers with it: one definition for both.

A run's reported rates hold for its users only if the model is asked the same way
in both places. So both:

- stop at the same tokens (``end_ids``: the tokenizer's EOS and every EOS id of the
  model's generation config, e.g. ChatML's ``<|im_end|>`` next to ``<|endoftext|>``);
- decode greedily at temperature 0, or sample from the full distribution
  (``sampling``: no top-k or top-p cut that one side would add by default);
- turn generated ids into text the same way (``completion``: up to the first end
  token, special tokens skipped) and say why generation ended: ``stop`` (an end
  token) or ``length`` (``max_new_tokens`` ran out);
- read tool calls the same way (``tool_answer``): the ``<tool_call>`` blocks of the
  text (``tool_calls.parse_output``). A text whose blocks all parse is the calls
  (finish reason ``tool_calls``) and the text around them; a text that opens a block
  that does not parse (a key repeated until the token cap, say) is not an answer:
  it is an invalid call holding the raw text and the parse error, and no content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.common.tool_calls import Call, Parsed, parse_output

STOP, LENGTH, TOOL_CALLS = "stop", "length", "tool_calls"


@dataclass(frozen=True)
class ToolAnswer:
    """What a model said, read as tool calls: ``parsed`` is what scoring reads (the trainer's
    ``recipes/tool_rewards.score_parsed``)."""

    content: str
    calls: list[Call] = field(default_factory=list)
    invalid_raw: str = ""  # the whole text, when it opened a block that does not parse
    invalid_error: str = ""  # parse_output's error code then
    finish_reason: str = STOP

    @property
    def parsed(self) -> Parsed:
        return Parsed(calls=self.calls, text=self.content, error=self.invalid_error)


def end_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids that end an answer: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    ids.discard(None)
    return sorted(ids)


def sampling(temperature: float) -> dict[str, Any]:
    """``generate`` keyword arguments: greedy at 0, else plain sampling at ``temperature``."""
    if temperature > 0:
        return {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    return {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}


def completion(tokenizer: Any, new_ids: list[int], ends: list[int]) -> tuple[str, str, int]:
    """(text, finish reason, tokens generated) of one row of new ids (padding after an end token ignored)."""
    end = next((i for i, token in enumerate(new_ids) if token in ends), None)
    if end is None:
        return tokenizer.decode(new_ids, skip_special_tokens=True), LENGTH, len(new_ids)
    return tokenizer.decode(new_ids[:end], skip_special_tokens=True), STOP, end + 1


def tool_answer(text: str, finish_reason: str) -> ToolAnswer:
    """``text`` read as a tool model's answer (module docstring)."""
    parsed = parse_output(text)
    if parsed.error:
        return ToolAnswer("", invalid_raw=text, invalid_error=parsed.error, finish_reason=finish_reason)
    if parsed.calls:
        return ToolAnswer(parsed.text, calls=parsed.calls, finish_reason=TOOL_CALLS)
    return ToolAnswer(text, finish_reason=finish_reason)
