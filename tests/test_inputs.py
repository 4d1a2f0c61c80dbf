"""Input-only datasets: every rule of "Text dataset formats" for input-only rows, and their warnings."""

from __future__ import annotations

import io
import json

import pytest

from services.common.reports import Report
from services.ingest import text_rows

USER = {"role": "user", "content": "Rewrite this email more politely"}


def jsonl(*rows: object) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def varied(n: int) -> list[dict[str, str]]:
    return [{"input": f"Summarize note number {k}"} for k in range(n)]


def validate(data: bytes, csv: bool = False, **limits: int) -> tuple[Report, bytes]:
    out = io.BytesIO()
    report = text_rows.validate_text(
        io.BytesIO(data), out, inputs_only=True, csv_format=csv, limits=text_rows.TextLimits(**limits)
    )
    return report, out.getvalue() if report.valid else b""


def codes(data: bytes, csv: bool = False) -> list[tuple[int, str, str]]:
    return [(v.line, v.field, v.code) for v in validate(data, csv)[0].violations]


def test_flat_chat_and_csv_rows_make_one_user_message():
    report, canonical = validate(jsonl({"input": "Summarize the note"}, {"messages": [USER]}, {"INPUT": "Hi"}))
    assert report.valid and report.rows == 3
    assert [json.loads(line) for line in canonical.splitlines()] == [
        {"messages": [{"role": "user", "content": "Summarize the note"}]},
        {"messages": [USER]},
        {"messages": [{"role": "user", "content": "Hi"}]},
    ]
    report, canonical = validate(b'\xef\xbb\xbfInput\r\n"Summarize, the note"\r\nRewrite this\r\n', csv=True)
    assert report.valid and report.rows == 2
    assert json.loads(canonical.splitlines()[0]) == {"messages": [{"role": "user", "content": "Summarize, the note"}]}


def test_input_is_required_a_non_blank_string():
    rows = jsonl({"id": 7}, {"input": 3}, {"input": " \n"}, {"input": None}, [{"input": "x"}], b"{")
    assert codes(rows) == [
        (1, "input", "missing_field"),
        (2, "input", "wrong_type"),
        (3, "input", "empty_field"),
        (4, "input", "wrong_type"),
        (5, "", "not_an_object"),
        (6, "", "invalid_json"),
    ]
    assert codes(b"id,text\n1,hello\n", csv=True) == [(1, "input", "missing_field")]
    assert codes(b"input\n\n   \n", csv=True) == [(0, "", "empty_dataset")]


def test_an_output_is_refused_with_the_way_out():
    report, _ = validate(jsonl({"input": "i", "output": "o"}, {"input": "i", "answer": "o"}))
    assert [(v.line, v.field, v.code) for v in report.violations] == [
        (1, "output", "output_not_allowed"),
        (2, "answer", "output_not_allowed"),
    ]
    assert "--kind pairs" in report.violations[0].hint and "teacher" in report.violations[0].hint
    assert codes(b"input,output\ni,o\n", csv=True) == [(1, "output", "output_not_allowed")]
    assert codes(b"input,Response\ni,o\n", csv=True) == [(1, "response", "output_not_allowed")]


def test_a_per_row_instruction_is_refused_for_named_system_prompts():
    report, _ = validate(jsonl({"system_prompt": "Be brief.", "input": "i"}, {"instruction": "x", "input": "i"}))
    assert [(v.line, v.field, v.code) for v in report.violations] == [
        (1, "system_prompt", "system_prompt_not_allowed"),
        (2, "instruction", "system_prompt_not_allowed"),
    ]
    assert "named system prompts" in report.violations[0].hint
    assert codes(b"system_prompt,input\ns,i\n", csv=True) == [(1, "system_prompt", "system_prompt_not_allowed")]


def test_messages_hold_one_user_message():
    system = {"role": "system", "content": "Be brief."}
    assistant = {"role": "assistant", "content": "Sure"}
    rows = jsonl(
        {"messages": [system, USER]},
        {"messages": [USER, assistant]},
        {"messages": [USER, USER]},
        {"messages": []},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user", "content": ""}]},
        {"messages": [USER], "input": "i"},
    )
    assert codes(rows) == [
        (1, "messages[0].role", "system_prompt_not_allowed"),
        (2, "messages[1].role", "output_not_allowed"),
        (3, "messages", "too_many_messages"),
        (4, "messages", "wrong_type"),
        (5, "messages[0].role", "invalid_role"),
        (6, "messages[0].content", "empty_field"),
        (7, "input", "ambiguous_shape"),
    ]


@pytest.mark.parametrize("alternate", ["prompt", "question", "query"])
def test_alternate_names_for_input_are_refused_with_the_name_to_use(alternate):
    report, _ = validate(jsonl({"input": "ok"}, {alternate: "x"}))
    assert [(v.line, v.field, v.code, v.hint) for v in report.violations] == [
        (2, alternate, "alternate_field_name", f"rename {alternate!r} to 'input'")
    ]
    assert codes(f"{alternate.upper()}\nx\n".encode(), csv=True) == [(1, alternate, "alternate_field_name")]


def test_unreadable_lines_and_files():
    assert codes(jsonl({"input": "ok"}) + b'{"input": "caf\xe9"}\n') == [(2, "", "invalid_encoding")]
    assert codes(b'{"input": "a", "input": "b"}\n') == [(1, "input", "duplicate_key")]
    assert codes(b'{"input": "a", "Input": "b"}\n') == [(1, "Input", "duplicate_field")]
    assert codes(b'{"input": "a\\u0000b"}\n') == [(1, "", "nul_byte")]
    assert codes(b"input\ncaf\xe9\n", csv=True) == [(2, "", "invalid_encoding")]
    assert codes(b"input\na\x00b\n", csv=True) == [(2, "", "nul_byte")]
    assert codes(b"input\nfine\n" + b"x" * 2000 + b"\n", csv=True) == []
    report, _ = validate(b"input\nfine\n" + b"x" * 2000 + b"\nlater\n", csv=True, max_line_bytes=1000)
    assert [(v.line, v.code) for v in report.violations] == [(3, "line_too_long")]


def test_warnings_for_input_only_rows():
    rows = [*varied(10), {"input": "summarize NOTE number 2."}, {"input": "word " * 9000}, {"messages": [USER]}]
    report, canonical = validate(jsonl(*rows))
    assert report.valid and len(canonical.splitlines()) == 13
    assert [(v.line, v.code) for v in report.warnings] == [
        (11, "near_duplicate"),
        (12, "long_row"),
        (13, "mixed_shapes"),
    ]
    assert "repeats line 3" in report.warnings[0].message
    assert [v.code for v in validate(jsonl(*varied(3)))[0].warnings] == ["few_rows"]
    csv_report, _ = validate(b"input\n" + b"".join(f"q{k}\n".encode() for k in range(10)) + b"=1+1\n", csv=True)
    assert [(v.line, v.field, v.code) for v in csv_report.warnings] == [(12, "input", "formula_cell")]
