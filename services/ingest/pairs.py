"""Input-output pairs datasets: validation and the canonical form.

Accepted, per row (see the training page's "Text dataset formats"):

- JSONL flat:     {"system_prompt": ..., "input": ..., "output": ...}
- JSONL messages: {"messages": [{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}]}
- CSV:            a header ``system_prompt,input,output`` and one record per row

Field names and CSV headers match case-insensitively. Alternate names
(``prompt``, ``response``, ``question``, ``answer``...) are refused with a hint
naming the field to rename to. Every valid row becomes one canonical line:
``{"messages": [system, user, assistant]}``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from services.ingest.reports import Report

REQUIRED = ("system_prompt", "input", "output")
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
ROLES_NEEDED = ("system", "user", "assistant")


class JsonObject(dict[str, Any]):
    """A JSON object whose keys are folded to lower case, remembering keys that collided."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.collisions: list[str] = []
        for key, value in pairs:
            low = key.lower()
            if low in self:
                self.collisions.append(key)
            self[low] = value


def _folded(obj: JsonObject, line: int, report: Report) -> JsonObject | None:
    if obj.collisions:
        key = obj.collisions[0]
        report.add(line, key, "duplicate_field", f"the field {key.lower()!r} appears more than once in this row",
                   "keep one of them (names match case-insensitively)")  # fmt: skip
        return None
    return obj


def _flat(row: dict[str, Any], line: int, report: Report) -> list[dict[str, str]] | None:
    ok = True
    for alternate, wanted in ALTERNATES.items():
        if alternate in row:
            report.add(line, alternate, "alternate_field_name", f"{alternate!r} is not an accepted field name",
                       f"rename {alternate!r} to {wanted!r}")  # fmt: skip
            ok = False
    for name in REQUIRED:
        if name not in row:
            if not any(ALTERNATES.get(a) == name for a in row):
                report.add(line, name, "missing_field", f"the row has no {name!r}",
                           f"add {name!r}; each row needs system_prompt, input and output")  # fmt: skip
            ok = False
        elif not isinstance(row[name], str):
            report.add(line, name, "wrong_type", f"{name!r} must be a string, not {type(row[name]).__name__}",
                       f"write {name!r} as text")  # fmt: skip
            ok = False
        elif not row[name].strip():
            report.add(line, name, "empty_field", f"{name!r} is empty", f"give {name!r} some text")
            ok = False
    if not ok:
        return None
    return [
        {"role": "system", "content": row["system_prompt"]},
        {"role": "user", "content": row["input"]},
        {"role": "assistant", "content": row["output"]},
    ]


def _messages(value: Any, line: int, report: Report) -> list[dict[str, str]] | None:
    if not isinstance(value, list) or not value:
        hint = 'write [{"role": "system", "content": ...}, {"role": "user", ...}, {"role": "assistant", ...}]'
        report.add(line, "messages", "wrong_type", "'messages' must be a non-empty list of messages", hint)
        return None
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            report.add(line, where, "wrong_type", f"{where} must be an object with role and content",
                       'write {"role": "user", "content": "..."}')  # fmt: skip
            return None
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            report.add(line, f"{where}.role", "invalid_role", f"{where} has role {role!r}",
                       "use system, user or assistant")  # fmt: skip
            return None
        if not isinstance(content, str) or not content.strip():
            report.add(line, f"{where}.content", "empty_field", f"{where} has no text content",
                       "give every message a non-empty string content")  # fmt: skip
            return None
        out.append({"role": role, "content": content})
    missing = [r for r in ROLES_NEEDED if r not in {m["role"] for m in out}]
    if missing:
        report.add(line, "messages", "missing_role", f"'messages' has no {', '.join(missing)} message",
                   "in pairs mode 'messages' needs a system, a user and an assistant message")  # fmt: skip
        return None
    if out[-1]["role"] != "assistant":
        report.add(line, "messages", "no_final_answer", "the last message is not the assistant's",
                   "end 'messages' with the assistant message the model should learn")  # fmt: skip
        return None
    return out


def _jsonl_rows(text: str) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            yield number, raw


def _row(obj: Any, line: int, report: Report) -> list[dict[str, str]] | None:
    if not isinstance(obj, JsonObject):
        report.add(line, "", "not_an_object", "the line is not a JSON object", 'write one {"...": ...} object per line')
        return None
    row = _folded(obj, line, report)
    if row is None:
        return None
    if "messages" in row:
        extra = [k for k in REQUIRED if k in row]
        if extra:
            report.add(line, extra[0], "ambiguous_shape", "the row has both 'messages' and flat fields",
                       "pick one shape per row: 'messages', or system_prompt/input/output")  # fmt: skip
            return None
        return _messages(row["messages"], line, report)
    return _flat(row, line, report)


def validate_jsonl(text: str, report: Report) -> list[list[dict[str, str]]]:
    rows = []
    for line, raw in _jsonl_rows(text):
        report.rows += 1
        try:
            obj = json.loads(raw, object_pairs_hook=JsonObject)
        except (json.JSONDecodeError, RecursionError) as err:
            message = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
            report.add(line, "", "invalid_json", f"the line is not valid JSON: {message}",
                       "write one JSON object per line (JSON Lines)")  # fmt: skip
            continue
        messages = _row(obj, line, report)
        if messages is not None:
            rows.append(messages)
    return rows


def validate_csv(text: str, report: Report) -> list[list[dict[str, str]]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as err:
        report.add(1, "", "invalid_csv", f"the header is not valid CSV: {err}", "quote cells that hold commas")
        return []
    if not header:
        return []
    columns = [h.strip().lower() for h in header]
    ok = True
    for alternate in columns:
        if alternate in ALTERNATES:
            report.add(1, alternate, "alternate_field_name", f"the column {alternate!r} is not accepted",
                       f"rename the column {alternate!r} to {ALTERNATES[alternate]!r}")  # fmt: skip
            ok = False
    for name in REQUIRED:
        if name not in columns and not any(ALTERNATES.get(c) == name for c in columns):
            report.add(1, name, "missing_field", f"the header has no {name!r} column",
                       "the header must be system_prompt,input,output")  # fmt: skip
            ok = False
    if len(set(columns)) != len(columns):
        report.add(1, "", "duplicate_field", "two columns share a name (names match case-insensitively)",
                   "keep one column of each name")  # fmt: skip
        ok = False
    rows = []
    while True:
        line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            report.rows += 1
            report.add(
                line, "", "invalid_csv", f"the record is not valid CSV: {err}", "quote cells that hold commas or quotes"
            )
            break
        if not any(cell.strip() for cell in record):
            continue
        report.rows += 1
        if not ok:
            continue
        if len(record) != len(columns):
            report.add(line, "", "wrong_column_count", f"the record has {len(record)} cells, the header {len(columns)}",
                       "give every record one cell per column")  # fmt: skip
            continue
        messages = _flat(dict(zip(columns, record, strict=True)), line, report)
        if messages is not None:
            rows.append(messages)
    return rows


def decode(data: bytes, report: Report) -> str | None:
    """UTF-8 text without a BOM; invalid bytes are a violation naming their line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        report.add(line, "", "invalid_encoding", f"byte {err.start} is not valid UTF-8",
                   "save the file as UTF-8")  # fmt: skip
        return None


def validate(data: bytes, csv_format: bool) -> tuple[Report, bytes]:
    """Check a pairs file; return the report and, when valid, the canonical JSONL."""
    report = Report()
    text = decode(data, report)
    if text is None:
        return report, b""
    rows = validate_csv(text, report) if csv_format else validate_jsonl(text, report)
    if report.rows == 0 and not report.counts:
        report.add(0, "", "empty_dataset", "the file has no rows", "add at least one row")
    if report.rows and report.rows < 10:
        report.warn(0, "", "few_rows", f"only {report.rows} rows", "a few hundred varied rows train far better")
    if not report.valid:
        return report, b""
    canonical = "".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in rows)
    return report, canonical.encode()
