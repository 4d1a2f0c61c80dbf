"""Tool-call conversations rendered for a student model: text for prompts, tokens and loss masks for SFT.

A canonical tool-call row (``services/ingest/tool_rows.py``) holds OpenAI-shaped
``messages`` (assistant ``tool_calls`` with ``arguments`` as JSON text, ``tool`` messages
with ``tool_call_id`` and ``name``) and canonical ``tools`` (``{name, description,
parameters}``). Whatever the path, the student learns to answer with the blocks that
``tool_calls.parse_output`` reads (``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``),
and a text answer when no tool is wanted. Two paths, picked once per tokenizer by ``detect``:

**native**: the student's chat template handles tools itself (Qwen2.5, Hermes and the
like). ``detect`` renders a probe conversation with ``tools=`` and an assistant
``tool_calls`` message and takes this path only when the probe's tool description
shows in the prompt and the assistant turn, as rendered, parses with ``parse_output``
into the probe's call. Messages go to ``apply_chat_template(messages,
tools=[{"type": "function", "function": tool}, ...])`` with the calls' arguments decoded
to objects (these templates ``tojson`` them) and an assistant's ``content`` ``""`` when
it has none. A template that writes calls some other way (Llama 3.1's bare JSON, say)
fails the probe and takes the fallback, so the output format stays one.

**fallback**: any ChatML-ish template. The tools go into the system message (appended
to the row's own, or a new first message): ``FALLBACK_TOOLS_HEADER``, one JSON line per
tool between ``<tools>`` tags and ``FALLBACK_INSTRUCTION``, which shows the block
format; a template that refuses the system role (Gemma's) gets that text at the head of
the first user message instead. An assistant turn with calls becomes plain text: its
content (if any), then ``tool_calls.render_calls``. A tool result stays a ``tool``
message when the template renders that role; otherwise it becomes a ``user`` message
wrapped in ``<tool_response>`` tags, consecutive results merged into one so roles still
alternate. ``detect`` finds out both with probe conversations.

**Tokens and labels** (``tokenize``): the text before each assistant turn (rendered with
the generation prompt) and each assistant turn (what rendering it adds after that) are
tokenized piece by piece, so a turn's tokens are exactly what the model generates after
the prompt of the same conversation; ``assistant_masks`` is 1 on assistant turns (calls,
answers and the template's end-of-turn token) and 0 on everything else. A template
whose rendering of a longer conversation does not extend the shorter one's (it rewrites
earlier turns) cannot be split so: ``tokenize`` raises ``RenderError`` for that row, as
``render`` does when the template raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from services.common.tool_calls import Call, decode_arguments, parse_output, render_calls

NATIVE, FALLBACK = "native", "fallback"
FALLBACK_TOOLS_HEADER = "# Tools\n\nYou may call one or more of these tools:\n<tools>"
FALLBACK_INSTRUCTION = (
    "</tools>\n\nTo call tools, answer with one block per call and nothing else:\n"
    '<tool_call>\n{"name": "<tool name>", "arguments": {<the arguments as a JSON object>}}\n</tool_call>\n'
    "When no tool is needed, answer in plain text."
)
_PROBE_DESCRIPTION = "Probe description 5a1f: looks up a key."
_PROBE_TOOL: dict[str, Any] = {
    "name": "probe_lookup",
    "description": _PROBE_DESCRIPTION,
    "parameters": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]},
}
_PROBE_CALL = Call("probe_lookup", {"key": "probe-value-7c"})
_PROBE_RESULT = "probe-result-93e"
_PROBE_SYSTEM = "probe-system-4d2"


class RenderError(ValueError):
    """The student's chat template cannot render a conversation, or not turn by turn."""


@dataclass(frozen=True)
class ToolFormat:
    """How one tokenizer renders tool conversations (module docstring)."""

    native: bool
    tool_role: str = "tool"  # fallback only: "tool", or "user" with <tool_response> tags
    system_role: bool = True  # fallback only: False puts the tools at the head of the first user message

    @property
    def name(self) -> str:
        return NATIVE if self.native else FALLBACK

    def to_dict(self) -> dict[str, Any]:
        """What ``training_config.json`` records, so ``Generate`` renders as training did without detecting again."""
        return {"native": self.native, "tool_role": self.tool_role, "system_role": self.system_role}

    @classmethod
    def from_dict(cls, recorded: dict[str, Any]) -> ToolFormat:
        return cls(
            bool(recorded["native"]), str(recorded.get("tool_role", "tool")), bool(recorded.get("system_role", True))
        )

    @property
    def note(self) -> str:
        """One line for training_config.json: which path, and how tool results are given."""
        if self.native:
            return "native: the student's chat template renders the tools and <tool_call> blocks"
        results = "tool messages" if self.tool_role == "tool" else "user messages in <tool_response> tags"
        where = "the system message" if self.system_role else "the first user message"
        return f"fallback: tools listed in {where}, calls as <tool_call> blocks, results as {results}"


def detect(tokenizer: Any) -> ToolFormat:
    """The native path when the template renders tools and <tool_call> blocks that parse back; else the fallback."""
    if _native_probe(tokenizer):
        return ToolFormat(native=True)
    results = [
        {"role": "user", "content": "Probe request"},
        {"role": "assistant", "content": render_calls([_PROBE_CALL])},
        {"role": "tool", "content": _PROBE_RESULT},
        {"role": "assistant", "content": "Done."},
    ]
    system = [{"role": "system", "content": _PROBE_SYSTEM}, {"role": "user", "content": "Probe request"}]
    return ToolFormat(
        native=False,
        tool_role="tool" if _renders(tokenizer, results, _PROBE_RESULT) else "user",
        system_role=_renders(tokenizer, system, _PROBE_SYSTEM),
    )


def _renders(tokenizer: Any, messages: list[dict[str, Any]], text: str) -> bool:
    """Whether the template renders ``messages`` with ``text`` in (one that refuses a role raises or drops it)."""
    try:
        return text in _template(tokenizer, messages)
    except Exception:
        return False


def _native_probe(tokenizer: Any) -> bool:
    tools = [{"type": "function", "function": _PROBE_TOOL}]
    function = {"name": _PROBE_CALL.name, "arguments": _PROBE_CALL.arguments}
    call = {"id": "call_probe", "type": "function", "function": function}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Probe request"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
    ]
    try:
        prompt = _template(tokenizer, messages[:1], tools=tools, add_generation_prompt=True)
        full = _template(tokenizer, messages, tools=tools)
    except Exception:
        return False
    if _PROBE_DESCRIPTION not in prompt or not full.startswith(prompt):
        return False
    parsed = parse_output(_strip_end(tokenizer, full[len(prompt) :]))
    return parsed.ok and parsed.calls == [_PROBE_CALL]


def _strip_end(tokenizer: Any, turn: str) -> str:
    """A rendered turn without the special tokens around it (they are not the model's text)."""
    for token in tokenizer.all_special_tokens:
        turn = turn.replace(token, "")
    return turn


def _template(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    if not isinstance(text, str):
        raise TypeError("the chat template did not render text")
    return text


# -- messages as the template gets them ----------------------------------------------------------


def tools_text(tools: list[dict[str, Any]]) -> str:
    """The fallback's description of the tools, for the system message."""
    lines = [json.dumps(tool, ensure_ascii=False) for tool in tools]
    return "\n".join([FALLBACK_TOOLS_HEADER, *lines, FALLBACK_INSTRUCTION])


def calls_of(message: dict[str, Any]) -> list[Call]:
    """An assistant message's tool calls, arguments decoded (JSON text in canonical rows)."""
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function", call)
        arguments, error = decode_arguments(function.get("arguments", {}))
        calls.append(Call(function["name"], arguments if not error else function.get("arguments")))
    return calls


def template_messages(
    fmt: ToolFormat, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """A row's messages as ``fmt`` hands them to the chat template (module docstring)."""
    return _native_messages(messages) if fmt.native else _fallback_messages(fmt, messages, tools)


def _native_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        if message["role"] == "assistant" and message.get("tool_calls"):
            calls = [
                {"id": call.get("id", f"call_{i}"), "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for i, (call, c) in enumerate(zip(message["tool_calls"], calls_of(message), strict=True))
            ]  # fmt: skip
            out.append({"role": "assistant", "content": message.get("content") or "", "tool_calls": calls})
        elif message["role"] == "tool":
            out.append({k: message[k] for k in ("role", "content", "tool_call_id", "name") if k in message})
        else:
            out.append({"role": message["role"], "content": message.get("content") or ""})
    return out


def _fallback_messages(
    fmt: ToolFormat, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    system = tools_text(tools)
    if messages and messages[0]["role"] == "system":
        system = f"{messages[0].get('content') or ''}\n\n{system}".lstrip()
        messages = messages[1:]
    out: list[dict[str, Any]] = []
    if fmt.system_role:
        out.append({"role": "system", "content": system})
    elif messages and messages[0]["role"] == "user":
        messages = [{"role": "user", "content": f"{system}\n\n{messages[0].get('content') or ''}"}, *messages[1:]]
    else:
        messages = [{"role": "user", "content": system}, *messages]
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            calls = render_calls(calls_of(message))
            out.append({"role": "assistant", "content": f"{content}\n{calls}" if content else calls})
        elif role == "tool" and fmt.tool_role == "user":
            wrapped = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1]["content"].startswith("<tool_response>"):
                out[-1] = {"role": "user", "content": f"{out[-1]['content']}\n{wrapped}"}
            else:
                out.append({"role": "user", "content": wrapped})
        else:
            out.append({"role": role, "content": content})
    return out


def render(
    fmt: ToolFormat,
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = False,
) -> str:
    """A row (or its first turns) as the student's text."""
    kwargs: dict[str, Any] = {"add_generation_prompt": add_generation_prompt}
    if fmt.native:
        kwargs["tools"] = [{"type": "function", "function": tool} for tool in tools]
    try:
        return _template(tokenizer, template_messages(fmt, messages, tools), **kwargs)
    except Exception as err:  # jinja's TemplateError, raise_exception in the template, a TypeError...
        raise RenderError(f"the student's chat template cannot render the conversation: {err}") from err


def prompt_and_expected(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The turns before the first assistant turn, and that turn's calls as ``{"name", "arguments"}`` ([]: text)."""
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if first is None:
        raise ValueError("the conversation has no assistant turn")
    expected = [{"name": c.name, "arguments": c.arguments} for c in calls_of(messages[first])]
    return messages[:first], expected


def prompt_text(fmt: ToolFormat, tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
    """The prompt of an eval or GRPO example: the turns before the first assistant turn, and the generation prompt."""
    prompt, _ = prompt_and_expected(messages)
    return render(fmt, tokenizer, prompt, tools, add_generation_prompt=True)


def prompt_ids(
    fmt: ToolFormat, tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[int]:
    """The token ids a tool model is asked with: ``messages`` rendered with the generation prompt, tokenized as
    SFT tokenized the text before an assistant turn (``tokenize``). The recipe's evaluation and ``Generate``
    both ask with these, so a run's reported rates are what its users get."""
    text = render(fmt, tokenizer, messages, tools, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tools_from_json(texts: list[str]) -> list[dict[str, Any]]:
    """Tools as they cross the wire (JSON text, one per tool) as the renderer takes them: key order and number
    types as written (a ``Struct`` would reorder keys and make every number a float)."""
    return [json.loads(text) for text in texts]


def tool_json(tool: dict[str, Any]) -> str:
    """One tool as JSON text for the wire, key order and number types as they are."""
    return json.dumps(tool, ensure_ascii=False)


def without_added_bos(tokenizer: Any, text: str) -> str:
    """``text`` without its leading BOS when the tokenizer adds one itself (trl tokenizes text prompts so)."""
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        ids = tokenizer("x")["input_ids"]
        if ids and ids[0] == tokenizer.bos_token_id:
            return text[len(bos) :]
    return text


# -- tokens and loss masks ------------------------------------------------------------------------


def tokenize(
    fmt: ToolFormat, tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> tuple[list[int], list[int]]:
    """A row's ``input_ids`` and ``assistant_masks`` (1 on every assistant turn's tokens, module docstring)."""
    ids: list[int] = []
    mask: list[int] = []
    covered = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(fmt, tokenizer, messages[:i], tools, add_generation_prompt=True)
        with_turn = render(fmt, tokenizer, messages[: i + 1], tools)
        if not before.startswith(covered) or not with_turn.startswith(before):
            raise RenderError(f"the chat template renders turn {i} so that it does not extend the turns before it")
        for piece, trained in ((before[len(covered) :], 0), (with_turn[len(before) :], 1)):
            piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
            ids += piece_ids
            mask += [trained] * len(piece_ids)
        covered = with_turn
    return ids, mask
