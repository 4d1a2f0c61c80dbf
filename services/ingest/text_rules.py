"""The rules for one text row, pairs or input-only (the training page's "Text dataset formats").

``Rules.flat`` checks a flat row (a JSONL object or a CSV record by column name),
``Rules.messages`` a ``messages`` list, ``Rules.header`` a CSV header. Each reports
what is wrong (line, field, code, message, hint) and returns the row's canonical
messages, or None.

- Pairs: ``system_prompt``, ``input`` and ``output`` are required non-blank strings;
  ``messages`` holds a system, a user and an assistant message and ends with the
  assistant's.
- Inputs: ``input`` is required; an output (``output`` or an assistant message) is
  ``output_not_allowed``, a per-row instruction (``system_prompt`` or a system
  message) ``system_prompt_not_allowed``; ``messages`` holds one user message.
- Names match case-insensitively (callers fold top-level keys and headers; message
  keys and roles are folded here); alternate names such as ``prompt`` or ``answer``
  are refused with the name to use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PAIRS_FIELDS = ("system_prompt", "input", "output")
INPUT_FIELDS = ("input",)
ALTERNATES = {
    "prompt": "input",
    "question": "input",
    "query": "input",
    "instruction": "system_prompt",
    "system": "system_prompt",
    "response": "output",
    "answer": "output",
    "completion": "output",
}
ROLES = ("system", "user", "assistant")
OUTPUT_HINT = "input-only rows carry no output (the teacher writes it): remove it, or upload with --kind pairs"
INSTRUCTION_HINT = "input-only rows carry no per-row instruction: remove it and add named system prompts to the run"

_MISSING = object()
Add = Callable[[int, str, str, str, str], None]  # Report.add(line, field, code, message, hint)
Messages = list[dict[str, str]]


class Rules:
    def __init__(self, inputs_only: bool, add: Add) -> None:
        self.inputs_only, self.add = inputs_only, add
        self.required = INPUT_FIELDS if inputs_only else PAIRS_FIELDS
        self.roles = ("user",) if inputs_only else ROLES
        self.forbidden = {"output": OUTPUT_HINT, "system_prompt": INSTRUCTION_HINT} if inputs_only else {}

    def _refused(self, number: int, name: str, what: str) -> bool:
        """Report ``name`` if it is an alternate name or, in input-only mode, an output or instruction."""
        wanted = ALTERNATES.get(name, name)
        if wanted in self.forbidden:
            code = "output_not_allowed" if wanted == "output" else "system_prompt_not_allowed"
            self.add(number, name, code, f"the {what} {name!r} is not accepted in input-only mode",
                     self.forbidden[wanted])  # fmt: skip
            return True
        if name in ALTERNATES:
            self.add(number, name, "alternate_field_name", f"{name!r} is not an accepted {what} name",
                     f"rename {name!r} to {wanted!r}")  # fmt: skip
            return True
        return False

    def header(self, columns: list[str]) -> bool:
        """Whether a CSV header (folded to lower case) names the required columns and nothing refused."""
        ok = True
        for name in columns:
            ok &= not self._refused(1, name, "column")
        for name in self.required:
            if name not in columns and not any(ALTERNATES.get(c) == name for c in columns):
                self.add(1, name, "missing_field", f"the header has no {name!r} column",
                         f"the header must be {','.join(self.required)}")  # fmt: skip
                ok = False
        if len(set(columns)) != len(columns):
            self.add(1, "", "duplicate_field", "two columns share a name (names match case-insensitively)",
                     "keep one column of each name")  # fmt: skip
            ok = False
        return ok

    def flat(self, row: dict[str, Any], number: int) -> Messages | None:
        ok = True
        for name in row:
            ok &= not self._refused(number, name, "field")
        for name in self.required:
            value = row.get(name, _MISSING)
            if value is _MISSING:
                if not any(ALTERNATES.get(other) == name for other in row):  # else already told to rename
                    self.add(number, name, "missing_field", f"the row has no {name!r}",
                             f"add {name!r}; each row needs {', '.join(self.required)}")  # fmt: skip
                ok = False
            elif not isinstance(value, str):
                self.add(number, name, "wrong_type", f"{name!r} must be a string, not {type(value).__name__}",
                         f"write {name!r} as text")  # fmt: skip
                ok = False
            elif not value.strip():
                self.add(number, name, "empty_field", f"{name!r} is empty", f"give {name!r} some text")
                ok = False
        if not ok:
            return None
        return [{"role": role, "content": row[name]} for role, name in zip(self.roles, self.required, strict=True)]

    def messages(self, value: Any, number: int) -> Messages | None:
        if not isinstance(value, list) or not value:
            shape = "one user message" if self.inputs_only else "a system, a user and an assistant message"
            self.add(number, "messages", "wrong_type", "'messages' must be a non-empty list of messages",
                     f"write 'messages' as a list holding {shape}")  # fmt: skip
            return None
        out = []
        for i, message in enumerate(value):
            checked = self._message(message, f"messages[{i}]", number)
            if checked is None:
                return None
            out.append(checked)
        if self.inputs_only:
            if len(out) > 1:
                self.add(number, "messages", "too_many_messages", f"'messages' holds {len(out)} user messages",
                         "an input-only row holds one user message")  # fmt: skip
                return None
            return out
        missing = [role for role in ROLES if role not in {m["role"] for m in out}]
        if missing:
            self.add(number, "messages", "missing_role", f"'messages' has no {', '.join(missing)} message",
                     "in pairs mode 'messages' needs a system, a user and an assistant message")  # fmt: skip
            return None
        if out[-1]["role"] != "assistant":
            self.add(number, "messages", "no_final_answer", "the last message is not the assistant's",
                     "end 'messages' with the assistant message the model should learn")  # fmt: skip
            return None
        return out

    def _message(self, message: Any, where: str, number: int) -> dict[str, str] | None:
        if not isinstance(message, dict):
            self.add(number, where, "wrong_type", f"{where} must be an object with role and content",
                     'write {"role": "user", "content": "..."}')  # fmt: skip
            return None
        folded = {str(key).lower(): v for key, v in message.items()}
        role, content = folded.get("role"), folded.get("content")
        role = role.lower() if isinstance(role, str) else role
        if role not in ROLES:
            self.add(number, f"{where}.role", "invalid_role", f"{where} has role {role!r}",
                     "use system, user or assistant")  # fmt: skip
            return None
        if self.inputs_only and role != "user":
            code, hint = ("output_not_allowed", OUTPUT_HINT) if role == "assistant" else (
                "system_prompt_not_allowed", INSTRUCTION_HINT)  # fmt: skip
            self.add(number, f"{where}.role", code, f"{where} is a {role} message, not accepted in input-only mode",
                     hint)  # fmt: skip
            return None
        if not isinstance(content, str):
            self.add(number, f"{where}.content", "wrong_type", f"{where}.content must be a string",
                     "write the content as text")  # fmt: skip
            return None
        if not content.strip():
            self.add(number, f"{where}.content", "empty_field", f"{where} has no text content",
                     "give every message a non-empty content")  # fmt: skip
            return None
        return {"role": role, "content": content}
