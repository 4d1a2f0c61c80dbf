"""Tool-call datasets: the OpenAI chat fine-tuning format with tools, checked and made canonical.

One JSON object per line (JSONL only; a CSV is ``unsupported_format``)::

    {"messages": [...], "tools": [{"type": "function", "function": {"name", "description", "parameters"}}],
     "parallel_tool_calls": true}

Unreadable lines get ``jsonl``'s codes (``invalid_encoding``, ``line_too_long``,
``nul_byte``, ``invalid_json``, ``nested_too_deeply``, ``number_too_large``,
``duplicate_key``, ``not_an_object``...). The rules for a row, each violation naming
its field (``messages[2].tool_calls[0].function.arguments.city``):

- ``messages`` and ``tools`` are required (``missing_field``) non-empty lists
  (``wrong_type``, ``empty_field``); ``functions``/``function_call`` (the legacy shape)
  are ``legacy_functions``; ``parallel_tool_calls``, when given, is a boolean;
- every tool is ``{"type": "function", "function": {...}}`` (``unrecognised_tool``)
  and passes ``tools.check_tool`` as a JSON Schema tool (its codes: ``missing_description``,
  ``untyped_property``, ``invalid_schema``...); its name must already be a valid one
  (``invalid_tool_name``: calls name it) and unique in the row (``duplicate_tool``);
  at most ``max_tools`` per row (``too_many_tools``);
- roles are system, user, assistant and tool (``invalid_role``); a system or user
  message has text content (a string, or a list of text parts); an assistant message
  has text or ``tool_calls`` (then its content may be null);
- a tool call is ``{"id", "type": "function", "function": {"name", "arguments"}}``:
  a unique id (``missing_tool_call_id``, ``duplicate_tool_call_id``), a tool of the row
  (``unknown_tool``), arguments as JSON text or an object (``missing_field``,
  ``invalid_arguments``, ``duplicate_key``, ``nested_too_deeply``, ``arguments_not_object``)
  that pass ``tool_calls.check_call`` (``missing_required``, ``wrong_type``,
  ``not_in_enum``, ``unknown_property``, ``schema_violation``, the path in the field);
  with ``parallel_tool_calls: false``, one call per message (``parallel_calls_not_allowed``);
- a tool message answers a call of the assistant message before it by
  ``tool_call_id`` (``missing_tool_call_id``, ``unknown_tool_call_id``), once
  (``tool_call_answered_twice``), and every call is answered before the next
  user, system or assistant message (``unanswered_tool_call``);
- a row holds a user and an assistant message (``missing_role``) and ends with an
  assistant message (``no_final_answer``), which may be a call.

A valid row becomes one canonical line: ``{"messages": [...], "tools": [{name,
description, parameters}]}``, messages holding only the fields above, arguments as
JSON text (``tool_calls.arguments_text``) and each tool message the ``name`` of the
tool it answers. Warnings: ``few_rows`` (under 10) and ``near_duplicate`` (the
messages repeat an earlier row's once case, whitespace and punctuation are ignored,
as for text rows). A tool checked once is remembered by its JSON, so a file repeating
the same tools on every row pays for their checks once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, NoReturn

import orjson

from services.common.reports import Report
from services.common.tool_calls import Call, arguments_text, check_call, decode_arguments, too_deep
from services.ingest import jsonl, tools
from services.ingest.text_rows import _DROP, _FOLD, FEW_ROWS

ROLES = ("system", "user", "assistant", "tool")
_MISSING = object()
_MAX_CACHED_TOOLS = 10_000
_REPEAT_HINT = "remove one of them: repeated rows weigh more in training"
_TOOL_SHAPE = '{"type": "function", "function": {"name", "description", "parameters"}}'
_CALL_SHAPE = '{"id": "call_1", "type": "function", "function": {"name": "...", "arguments": "{...}"}}'
_ANSWER_HINT = "follow an assistant message with tool_calls by one tool message per call, with its tool_call_id"
_SCHEMA_HINTS = {
    "missing_required": "add the argument the tool requires",
    "wrong_type": "give the argument the type the tool's schema says",
    "not_in_enum": "use one of the values the tool's schema lists",
    "unknown_property": "remove the argument: the tool does not declare it",
}

Add = Callable[[str, str, str, str], None]  # (field, code, message, hint) for the current line


@dataclass(frozen=True)
class ToolRowLimits:
    max_line_bytes: int = jsonl.MAX_LINE_BYTES
    near_duplicate_rows: int = 1_000_000  # distinct rows remembered for near-duplicate warnings
    max_tools: int = 128  # per row


class Refusal(Exception):
    """The row breaks a rule; its violation is already reported."""


def csv_refused() -> Report:
    report = Report()
    report.add(0, "", "unsupported_format", "tool-call datasets are JSONL, not CSV: a row holds nested messages "
               "and tools", 'write one {"messages": [...], "tools": [...]} object per line (.jsonl)')  # fmt: skip
    return report


def validate_tool_calls(f: IO[bytes], out: IO[bytes], limits: ToolRowLimits = ToolRowLimits()) -> Report:
    """Check a tool-call dataset streamed from ``f`` and write each valid row's canonical line to ``out``,
    which only means something when the report is valid (writing stops at the first violation)."""
    check = _Check(limits)
    for start, lines in jsonl.blocks(f, check.report, limits.max_line_bytes):
        canonical: list[bytes] = []
        for number, raw in enumerate(lines, start):
            if not raw.strip():
                continue
            check.report.rows += 1
            obj = jsonl.parse_object(raw, number, check.report)
            if obj is not None and (line := check.row(obj, number)) is not None:
                canonical.append(line)
        if canonical and not check.report.counts:
            out.write(b"\n".join(canonical) + b"\n")
    return check.finish()


def codes_of(path: str) -> list[str]:
    """The violation and warning codes of a file (for the hostile-input tests)."""
    with open(path, "rb") as f, open(os.devnull, "wb") as out:
        report = validate_tool_calls(f, out)
    return sorted({*report.counts, *report.warning_counts})


def _text(value: Any) -> str | None:
    """Message content as text: a string, or a list of ``{"type": "text", "text": ...}`` parts joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    return None


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer past 64 bits (read by the standard library's parser)
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise jsonl.DuplicateKey(key)
        out[key] = value
    return out


def _keys(value: Any) -> int:
    """The keys of every object in ``value`` (nested at most ``MAX_DEPTH`` levels)."""
    if isinstance(value, dict):
        return len(value) + sum(_keys(v) for v in value.values())
    if isinstance(value, list):
        return sum(_keys(v) for v in value)
    return 0


class _Check:
    def __init__(self, limits: ToolRowLimits) -> None:
        self.limits, self.report = limits, Report()
        self.seen: dict[int, int] = {}  # near-duplicate key hash -> first line
        # A tool's JSON -> its canonical form, or its violations as (field under the tool, code, message, hint).
        self.checked: dict[bytes, tuple[dict[str, Any] | None, list[tuple[str, str, str, str]]]] = {}

    def row(self, obj: dict[str, Any], number: int) -> bytes | None:
        """The row's canonical line, or None after reporting what is wrong."""

        def add(field: str, code: str, message: str, hint: str) -> None:
            self.report.add(number, field, code, message, hint)

        try:
            row = self._row(obj, add)
        except Refusal:
            return None
        messages = orjson.dumps(row["messages"])
        first = self._remember(hash(messages.translate(_FOLD, _DROP)), number)
        if first != number:
            message = f"the messages repeat line {first} once case, whitespace and punctuation are ignored"
            self.report.warn(number, "messages", "near_duplicate", message, _REPEAT_HINT)
        return b'{"messages":' + messages + b',"tools":' + _dumps(row["tools"]) + b"}"

    def _remember(self, key: int, number: int) -> int:
        if len(self.seen) < self.limits.near_duplicate_rows:
            return self.seen.setdefault(key, number)
        return self.seen.get(key, number)

    def _row(self, obj: dict[str, Any], add: Add) -> dict[str, Any]:
        for legacy in ("functions", "function_call"):
            if legacy in obj:
                fail(add, legacy, "legacy_functions", f"{legacy!r} is the legacy shape of tools",
                     f"describe the functions in 'tools' ({_TOOL_SHAPE}) and calls in 'tool_calls'")  # fmt: skip
        for name in ("messages", "tools"):
            value = obj.get(name, _MISSING)
            if value is _MISSING:
                fail(add, name, "missing_field", f"the row has no {name!r}", "each row needs 'messages' and 'tools'")
            if not isinstance(value, list):
                fail(add, name, "wrong_type", f"{name!r} must be a list", f"write {name!r} as a JSON list")
            if not value:
                fail(add, name, "empty_field", f"{name!r} is empty", f"give {name!r} at least one item")
        parallel = obj.get("parallel_tool_calls", True)
        if not isinstance(parallel, bool):
            fail(add, "parallel_tool_calls", "wrong_type", "'parallel_tool_calls' must be true or false",
                 "write it as a JSON boolean, or leave it out")  # fmt: skip
        canonical_tools = self._tools(obj["tools"], add)
        by_name = {tool["name"]: tool for tool in canonical_tools}
        return {"messages": _Messages(by_name, parallel, add).check(obj["messages"]), "tools": canonical_tools}

    def _tools(self, items: list[Any], add: Add) -> list[dict[str, Any]]:
        if len(items) > self.limits.max_tools:
            fail(add, "tools", "too_many_tools", f"the row offers {len(items)} tools, over {self.limits.max_tools}",
                 "offer the tools this conversation needs")  # fmt: skip
        out: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            where = f"tools[{i}]"
            function = item.get("function") if isinstance(item, dict) else None
            if not isinstance(function, dict) or item.get("type") != "function":
                fail(add, where, "unrecognised_tool", f"{where} is not a function tool", f"write {_TOOL_SHAPE}")
            key = self._key(function, f"{where}.function", add)
            found = self.checked.get(key) or self._check_tool(function)
            if len(self.checked) < _MAX_CACHED_TOOLS:
                self.checked[key] = found
            canonical, problems = found
            for field, code, message, hint in problems:
                add(f"{where}.function{'.' + field if field else ''}", code, message, hint)
            if canonical is None:
                raise Refusal
            if any(tool["name"] == canonical["name"] for tool in out):
                fail(add, f"{where}.function.name", "duplicate_tool", f"two tools of the row are named "
                     f"{canonical['name']!r}", "give each tool its own name")  # fmt: skip
            out.append(canonical)
        return out

    @staticmethod
    def _key(function: dict[str, Any], where: str, add: Add) -> bytes:
        """The tool's canonical JSON, which it is remembered by."""
        try:
            return orjson.dumps(function, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # nested past orjson's limit (255), or an integer past 64 bits
            if too_deep(function, tools.LIMITS.max_depth):
                fail(add, where, "nested_too_deeply", f"the tool nests over {tools.LIMITS.max_depth} levels",
                     "flatten the tool's parameters")  # fmt: skip
            return json.dumps(function, sort_keys=True).encode()

    @staticmethod
    def _check_tool(function: dict[str, Any]) -> tuple[dict[str, Any] | None, list[tuple[str, str, str, str]]]:
        name, description = function.get("name", ""), function.get("description", "")
        tool, report = tools.check_tool(name, description, function.get("parameters"), tools.JSON_SCHEMA)
        problems = [(v.field, v.code, v.message, v.hint) for v in report.violations]
        if tool is not None and tool.name != name:
            hint = f"name it {tool.name!r}: letters, digits, _ and -, at most 64 (calls use the name)"
            problems.append(("name", "invalid_tool_name", f"the tool name {name!r} is not a valid name", hint))
        if problems:
            return None, problems
        assert tool is not None  # no violation means a tool
        return {"name": tool.name, "description": tool.description, "parameters": tool.parameters}, []

    def finish(self) -> Report:
        report = self.report
        if report.rows == 0 and not report.counts:
            report.add(0, "", "empty_dataset", "the file has no rows", "add at least one row")
        if 0 < report.rows < FEW_ROWS:
            report.warn(0, "", "few_rows", f"only {report.rows} rows", "a few hundred varied rows train far better")
        return report


def fail(add: Add, field: str, code: str, message: str, hint: str) -> NoReturn:
    add(field, code, message, hint)
    raise Refusal


class _Messages:
    """The rules for one row's messages, given its tools by name."""

    def __init__(self, tools: dict[str, dict[str, Any]], parallel: bool, add: Add) -> None:
        self.tools, self.parallel, self.add = tools, parallel, add
        self.called: dict[str, str] = {}  # call id -> tool name, over the row
        self.pending: list[str] = []  # calls of the last assistant message not answered yet
        self.answered: set[str] = set()

    def check(self, value: list[Any]) -> list[dict[str, Any]]:
        out = []
        for i, message in enumerate(value):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                fail(self.add, where, "wrong_type", f"{where} must be an object with a role",
                     'write {"role": "user", "content": "..."}')  # fmt: skip
            folded = {str(key).lower(): v for key, v in message.items()}
            role = folded.get("role")
            role = role.lower() if isinstance(role, str) else role
            if role not in ROLES:
                fail(self.add, f"{where}.role", "invalid_role", f"{where} has role {role!r}",
                     "use system, user, assistant or tool")  # fmt: skip
            if self.pending and role != "tool":
                fail(self.add, where, "unanswered_tool_call", f"call {self.pending[0]!r} has no tool message "
                     f"before {where}", _ANSWER_HINT)  # fmt: skip
            if role == "assistant":
                out.append(self._assistant(folded, where))
            elif role == "tool":
                out.append(self._answer(folded, where))
            else:
                out.append({"role": role, "content": self._content(folded, where, blank=False)})
        roles = {m["role"] for m in out}
        missing = [role for role in ("user", "assistant") if role not in roles]
        if missing:
            fail(self.add, "messages", "missing_role", f"'messages' has no {' or '.join(missing)} message",
                 "a row needs a user message and the assistant's answer or call")  # fmt: skip
        if out[-1]["role"] != "assistant":
            fail(self.add, "messages", "no_final_answer", "the last message is not the assistant's",
                 "end 'messages' with the assistant message (text or tool calls) the model should learn")  # fmt: skip
        return out

    def _content(self, folded: dict[str, Any], where: str, blank: bool) -> str:
        text = _text(folded.get("content"))
        if text is None:
            fail(self.add, f"{where}.content", "wrong_type", f"{where}.content must be text",
                 "write the content as a string")  # fmt: skip
        if not blank and not text.strip():
            fail(self.add, f"{where}.content", "empty_field", f"{where} has no text content",
                 "give the message some text")  # fmt: skip
        return text

    def _assistant(self, folded: dict[str, Any], where: str) -> dict[str, Any]:
        calls = folded.get("tool_calls")
        if calls is None:
            return {"role": "assistant", "content": self._content(folded, where, blank=False)}
        if not isinstance(calls, list) or not calls:
            fail(self.add, f"{where}.tool_calls", "wrong_type", "'tool_calls' must be a non-empty list",
                 f"write [{_CALL_SHAPE}], or leave it out")  # fmt: skip
        if not self.parallel and len(calls) > 1:
            fail(self.add, f"{where}.tool_calls", "parallel_calls_not_allowed", f"{where} makes {len(calls)} calls "
                 "and the row sets parallel_tool_calls to false", "make one call per message")  # fmt: skip
        content = None if folded.get("content") is None else self._content(folded, where, blank=True)
        checked = [self._call(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(calls)]
        self.pending = [call["id"] for call in checked]
        return {"role": "assistant", "content": content or None, "tool_calls": checked}

    def _call(self, call: Any, where: str) -> dict[str, Any]:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            fail(self.add, where, "wrong_type", f"{where} is not a function call", f"write {_CALL_SHAPE}")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id.strip():
            fail(self.add, f"{where}.id", "missing_tool_call_id", f"{where} has no id",
                 "give every call an id that its tool message answers with tool_call_id")  # fmt: skip
        if call_id in self.called:
            fail(self.add, f"{where}.id", "duplicate_tool_call_id", f"the call id {call_id!r} is used twice",
                 "give every call of the row its own id")  # fmt: skip
        name = function.get("name")
        if not isinstance(name, str) or name not in self.tools:
            fail(self.add, f"{where}.function.name", "unknown_tool", f"{where} calls {name!r}, not a tool of the row",
                 f"call one of: {', '.join(sorted(self.tools))}")  # fmt: skip
        arguments = self._arguments(function.get("arguments", _MISSING), f"{where}.function.arguments")
        reasons = check_call(Call(name, arguments), self.tools)
        for reason in reasons:
            code, _, path = reason.partition(":")
            field = f"{where}.function.arguments" + ("" if path in ("", "$") else "." * (path[0] != "[") + path)
            self.add(
                field,
                code,
                f"the arguments break {name!r}'s schema: {reason}",
                _SCHEMA_HINTS.get(code, "make the arguments valid against the tool's parameters schema"),
            )
        if reasons:
            raise Refusal
        self.called[call_id] = name
        return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments_text(arguments)}}

    def _arguments(self, raw: Any, field: str) -> dict[str, Any]:
        if raw is _MISSING:
            fail(self.add, field, "missing_field", "the call has no arguments", 'write "arguments": "{}" for none')
        arguments, error = decode_arguments(raw)
        if error == "invalid_json":
            fail(self.add, field, "invalid_arguments", "the arguments are not valid JSON text",
                 'write the arguments as a JSON object in a string: "{\\"city\\": \\"Paris\\"}"')  # fmt: skip
        if error:
            fail(self.add, field, error, f"the arguments are not a JSON object ({error})",
                 "write the arguments as one flat-enough JSON object")  # fmt: skip
        if isinstance(raw, str) and raw.count(":") > _keys(arguments):  # else no key can have been dropped
            try:
                json.loads(raw, object_pairs_hook=_no_duplicates)
            except jsonl.DuplicateKey as dup:
                fail(self.add, field, "duplicate_key", f"the key {dup.key!r} appears twice in the arguments",
                     "keep one of them")  # fmt: skip
        return dict(arguments)

    def _answer(self, folded: dict[str, Any], where: str) -> dict[str, Any]:
        call_id = folded.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id.strip():
            fail(self.add, f"{where}.tool_call_id", "missing_tool_call_id", f"{where} has no tool_call_id",
                 "name the call this message answers")  # fmt: skip
        if call_id in self.answered:
            fail(self.add, f"{where}.tool_call_id", "tool_call_answered_twice", f"the call {call_id!r} is answered "
                 "twice", "answer each call with one tool message")  # fmt: skip
        if call_id not in self.pending:
            fail(self.add, f"{where}.tool_call_id", "unknown_tool_call_id", f"no call of the assistant message "
                 f"before answers to {call_id!r}", _ANSWER_HINT)  # fmt: skip
        self.pending.remove(call_id)
        self.answered.add(call_id)
        content = self._content(folded, where, blank=True)
        return {"role": "tool", "tool_call_id": call_id, "name": self.called[call_id], "content": content}
