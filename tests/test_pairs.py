"""Pairs datasets: every rule of "Text dataset formats", its warnings, the canonical form, and the CLI."""

from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner
from minio import Minio
from test_tracing_and_cli import cli_env

from distillery.cli.main import cli
from services.common.reports import Report
from services.ingest import text_rows
from services.ingest.text_rules import PAIRS_FIELDS

FLAT = {"system_prompt": "You are a concise assistant.", "input": "Summarize the note", "output": "A summary"}
CHAT = {
    "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Summarize the note"},
        {"role": "assistant", "content": "A summary"},
    ]
}


def jsonl(*rows: object) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def varied(n: int) -> list[dict[str, str]]:
    """n flat rows that are not near duplicates of each other."""
    return [{**FLAT, "input": f"Summarize note number {k}"} for k in range(n)]


def validate(data: bytes, csv: bool = False, **limits: int) -> tuple[Report, bytes]:
    """The report and, when valid, the canonical JSONL."""
    out = io.BytesIO()
    report = text_rows.validate_text(
        io.BytesIO(data), out, inputs_only=False, csv_format=csv, limits=text_rows.TextLimits(**limits)
    )
    return report, out.getvalue() if report.valid else b""


def codes(data: bytes, csv: bool = False) -> list[tuple[int, str, str]]:
    return [(v.line, v.field, v.code) for v in validate(data, csv)[0].violations]


def warnings(data: bytes, csv: bool = False, **limits: int) -> list[tuple[int, str, str]]:
    return [(v.line, v.field, v.code) for v in validate(data, csv, **limits)[0].warnings]


def test_flat_and_chat_rows_make_the_same_canonical_row():
    report, canonical = validate(jsonl(FLAT, CHAT))
    assert report.valid and report.rows == 2
    first, second = (json.loads(line) for line in canonical.splitlines())
    assert first == second == CHAT


def test_canonical_lines_keep_every_valid_row_in_order_across_blocks():
    rows = [{**FLAT, "input": f'note {k}: "quoted"\nline é \u2014 {k * 7}'} for k in range(20_000)]
    rows[5] = CHAT  # a row off the fast path among them
    report, canonical = validate(jsonl(*rows))
    assert report.valid and report.rows == 20_000
    lines = canonical.splitlines()
    assert [json.loads(line)["messages"][1]["content"] for line in lines] == [
        (r["messages"][1]["content"] if "messages" in r else r["input"]) for r in rows
    ]
    assert lines[0] == json.dumps(
        {"messages": [{"role": "system", "content": FLAT["system_prompt"]},
                      {"role": "user", "content": rows[0]["input"]},
                      {"role": "assistant", "content": FLAT["output"]}]},
        ensure_ascii=False, separators=(",", ":"),
    ).encode()  # fmt: skip


def test_field_names_match_case_insensitively_in_json_and_csv():
    shouty = {"SYSTEM_PROMPT": "s", "Input": "i", "OUTPUT": "o"}
    assert validate(jsonl(shouty))[0].valid
    report, canonical = validate(b'System_Prompt,INPUT,Output\r\n"s, with comma",i,o\r\n', csv=True)
    assert report.valid
    assert json.loads(canonical)["messages"][0]["content"] == "s, with comma"
    mixed_roles = {"messages": [{"ROLE": "System", "Content": "s"}, {"role": "USER", "content": "u"},
                                {"role": "assistant", "content": "a"}]}  # fmt: skip
    report, canonical = validate(jsonl(mixed_roles))
    assert report.valid and json.loads(canonical)["messages"][0] == {"role": "system", "content": "s"}


@pytest.mark.parametrize(
    ("alternate", "wanted"),
    [("prompt", "input"), ("question", "input"), ("query", "input"), ("response", "output"), ("answer", "output"),
     ("completion", "output"), ("instruction", "system_prompt"), ("system", "system_prompt")],
)  # fmt: skip
def test_alternate_names_are_refused_with_the_name_to_use(alternate, wanted):
    row = {k: v for k, v in FLAT.items() if k != wanted} | {alternate: "x"}
    report, _ = validate(jsonl(FLAT, row))
    found = [v for v in report.violations if v.code == "alternate_field_name"]
    assert [(v.line, v.field) for v in found] == [(2, alternate)]
    assert f"rename {alternate!r} to {wanted!r}" in found[0].hint
    assert not [v for v in report.violations if v.code == "missing_field"]  # the rename says it all
    header = ",".join(alternate if c == wanted else c for c in PAIRS_FIELDS)
    csv_report, _ = validate(f"{header}\na,b,c\n".encode(), csv=True)
    assert ("alternate_field_name", alternate) in {(v.code, v.field) for v in csv_report.violations}


def test_required_fields_and_types():
    rows = jsonl(
        {"system_prompt": "s", "input": "i"},  # no output
        {"input": "i", "output": "o"},  # no system_prompt
        {"system_prompt": "s", "input": 3, "output": "o"},
        {"system_prompt": "s", "input": "  ", "output": "o"},
        [1, 2],
        b"{not json",
        {"system_prompt": "s", "output": "o"},  # no input
        {"system_prompt": ["s"], "input": "i", "output": "o"},
        b"null",
    )
    assert codes(rows) == [
        (1, "output", "missing_field"),
        (2, "system_prompt", "missing_field"),
        (3, "input", "wrong_type"),
        (4, "input", "empty_field"),
        (5, "", "not_an_object"),
        (6, "", "invalid_json"),
        (7, "input", "missing_field"),
        (8, "system_prompt", "wrong_type"),
        (9, "", "not_an_object"),
    ]


def test_csv_rules():
    assert codes(b"system_prompt,input,output\ns,i\n", csv=True) == [(2, "", "wrong_column_count")]
    assert codes(b"system_prompt,input\ns,i\n", csv=True) == [(1, "output", "missing_field")]
    assert codes(b"input,output\ni,o\n", csv=True) == [(1, "system_prompt", "missing_field")]
    assert codes(b"system_prompt,output\ns,o\n", csv=True) == [(1, "input", "missing_field")]
    assert codes(b"input,Input,system_prompt,output\ni,i,s,o\n", csv=True) == [(1, "", "duplicate_field")]
    assert codes(b'system_prompt,input,output\ns,"i\n', csv=True) == [(2, "", "invalid_csv")]
    assert codes(b"system_prompt,input,output\ns, ,o\n", csv=True) == [(2, "input", "empty_field")]
    report, canonical = validate(b'\n\nsystem_prompt,input,output\n\ns,"two\nlines",o\n,,\n', csv=True)
    assert report.valid and report.rows == 1  # blank lines and empty records are no rows
    assert json.loads(canonical)["messages"][1]["content"] == "two\nlines"
    assert codes(b"system_prompt,input,output\n", csv=True) == [(0, "", "empty_dataset")]


def test_messages_need_system_user_and_assistant():
    no_system = {"messages": CHAT["messages"][1:]}
    bad_role = {"messages": [*CHAT["messages"][:2], {"role": "robot", "content": "x"}]}
    ends_with_user = {"messages": [*CHAT["messages"], {"role": "user", "content": "more"}]}
    both = {**CHAT, "input": "i"}
    not_a_list = {"messages": "hello"}
    not_an_object = {"messages": [*CHAT["messages"][:2], "assistant: hi"]}
    blank = {"messages": [*CHAT["messages"][:2], {"role": "assistant", "content": " "}]}
    number = {"messages": [*CHAT["messages"][:2], {"role": "assistant", "content": 4}]}
    assert codes(jsonl(no_system, bad_role, ends_with_user, both, not_a_list, not_an_object, blank, number)) == [
        (1, "messages", "missing_role"),
        (2, "messages[2].role", "invalid_role"),
        (3, "messages", "no_final_answer"),
        (4, "input", "ambiguous_shape"),
        (5, "messages", "wrong_type"),
        (6, "messages[2]", "wrong_type"),
        (7, "messages[2].content", "empty_field"),
        (8, "messages[2].content", "wrong_type"),
    ]
    multi_turn = {"messages": [*CHAT["messages"], {"role": "user", "content": "more"},
                               {"role": "assistant", "content": "sure"}]}  # fmt: skip
    assert validate(jsonl(multi_turn))[0].valid


def test_encoding_duplicates_and_empty_files():
    assert codes(jsonl(FLAT) + b'{"input": "\xff"}\n') == [(2, "", "invalid_encoding")]
    assert validate(b"\xef\xbb\xbf" + jsonl(FLAT))[0].valid  # a UTF-8 BOM is fine
    assert validate(jsonl(FLAT).replace(b"\n", b"\r\n"))[0].valid  # so are CRLF line ends
    assert codes(jsonl({**FLAT, "INPUT": "again"})) == [(1, "INPUT", "duplicate_field")]
    assert codes(b"\n\n") == [(0, "", "empty_dataset")]
    assert codes(b"") == [(0, "", "empty_dataset")]


def test_a_duplicate_key_is_found_however_the_line_is_written():
    compact = b'{"system_prompt":"s","input":"a","input":"b","output":"o"}'
    spaced = b'{"system_prompt": "s", "input" :  "a", "input":"b", "output": "o"}'
    escaped_key = b'{"system_prompt":"s","inp\\u0075t":"a","input":"b","output":"o"}'
    shortest = b'{"system_prompt":"s","input":0,"input":"b","output":"o"}'
    in_message = b'{"messages":[{"role":"system","content":"s","content":"t"},{"role":"user","content":"u"},' \
                 b'{"role":"assistant","content":"a"}]}'  # fmt: skip
    for line in (compact, spaced, escaped_key, shortest, in_message):
        assert [c for _, _, c in codes(line + b"\n")] == ["duplicate_key"], line
    # JSON escapes and whitespace alone are no duplicate
    assert validate(b'{"system_prompt": "s", "input": "say \\"hi\\"\\n", "output": "o\\u00e9"}\n')[0].valid


def test_a_report_keeps_100_violations_and_counts_all():
    report, _ = validate(jsonl(*[{"input": "i"}] * 500))
    assert len(report.violations) == 100
    assert report.counts == {"missing_field": 1000}
    assert report.rows == 500 and not report.valid


def test_long_rows_are_warned_with_the_estimate_and_the_limit():
    long_row = {**FLAT, "output": "word " * 2000}  # about 2,500 tokens
    report, canonical = validate(jsonl(*varied(12), long_row))
    assert report.valid and canonical  # a warning never blocks
    [warning] = report.warnings
    assert (warning.line, warning.code) == (13, "long_row")
    assert "about 2511 tokens" in warning.message and "context of 2048" in warning.message
    assert warnings(jsonl(*varied(12), long_row), context_tokens=4096) == []


def test_near_duplicates_name_the_earlier_line():
    rows = varied(12)
    rows.append({**rows[3], "input": "  SUMMARIZE note, number 3!! "})  # line 13 repeats line 4
    rows.append({"messages": [{"role": "system", "content": FLAT["system_prompt"]},
                              {"role": "user", "content": "summarize note number 7"},
                              {"role": "assistant", "content": FLAT["output"]}]})  # fmt: skip
    rows.append({**rows[5], "output": "A different summary"})  # not a repeat
    report, _ = validate(jsonl(*rows))
    found = [(v.line, v.message) for v in report.warnings if v.code == "near_duplicate"]
    assert [line for line, _ in found] == [13, 14]
    assert "repeats line 4" in found[0][1] and "repeats line 8" in found[1][1]
    assert report.valid


def test_near_duplicates_across_blocks_and_with_a_full_memory():
    rows = [{**FLAT, "input": f"note {k} " + "x" * 300} for k in range(1000)]  # about 6 blocks of lines
    rows += [{**FLAT, "input": "NOTE 0 " + "X" * 300}, {**FLAT, "input": "note 900 " + "x" * 300}]
    report, _ = validate(jsonl(*rows))
    assert [(v.line, v.code) for v in report.warnings] == [(1001, "near_duplicate"), (1002, "near_duplicate")]
    assert "repeats line 1 " in report.warnings[0].message and "repeats line 901 " in report.warnings[1].message
    # Past the memory's size, no new rows are remembered (the first block's are): line 901 is forgotten.
    report, _ = validate(jsonl(*rows), near_duplicate_rows=10)
    assert [v.line for v in report.warnings] == [1001]


def test_few_rows_and_mixed_shapes():
    assert warnings(jsonl(FLAT)) == [(0, "", "few_rows")]
    report, _ = validate(jsonl(*varied(11), CHAT))
    assert [(v.line, v.code) for v in report.warnings] == [(12, "mixed_shapes")]
    assert "line 1 has the flat shape and line 12 the messages shape" in report.warnings[0].message
    assert [v.code for v in validate(jsonl(*varied(11)))[0].warnings] == []


def test_formula_cells_are_kept_as_text_and_flagged():
    data = b"system_prompt,input,output\n" + b"".join(f"s,question {k},a\n".encode() for k in range(10))
    data += b"=cmd|' /C calc'!A0,+1,\"@SUM(A1)\"\ns,-2 apples,ok\n"
    report, canonical = validate(data, csv=True)
    assert report.valid
    assert [(v.line, v.field, v.code) for v in report.warnings] == [
        (12, "system_prompt", "formula_cell"),
        (12, "input", "formula_cell"),
        (12, "output", "formula_cell"),
        (13, "input", "formula_cell"),
    ]
    stored = json.loads(canonical.splitlines()[10])["messages"]
    assert [m["content"] for m in stored] == ["=cmd|' /C calc'!A0", "+1", "@SUM(A1)"]


def test_cli_validate_and_upload_report_by_line_field_code_message_hint(services, make_tenant, tmp_path):
    tenant = make_tenant()
    env = cli_env(services, tenant.api_key)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl(FLAT, {"prompt": "p", "system_prompt": "s", "output": "o"}))
    result = CliRunner().invoke(cli, ["datasets", "validate", str(bad), "--kind", "pairs", "--json"], env=env)
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert (report["valid"], report["rows"]) == (False, 2)
    assert report["violations"][0] == {
        "line": 2, "field": "prompt", "code": "alternate_field_name", "entry": "",
        "message": "'prompt' is not an accepted field name", "hint": "rename 'prompt' to 'input'",
    }  # fmt: skip

    uploaded = CliRunner().invoke(cli, ["datasets", "upload", str(bad), "--kind", "pairs", "--json"], env=env)
    assert uploaded.exit_code == 1
    stored = json.loads(uploaded.output)
    assert stored["valid"] is False and stored["violations"][0]["code"] == "alternate_field_name"

    good = tmp_path / "good.csv"
    good.write_text("system_prompt,input,output\nBe brief.,Say hi,Hi\n")
    ok = CliRunner().invoke(cli, ["datasets", "upload", str(good), "--kind", "pairs", "--json"], env=env)
    assert ok.exit_code == 0, ok.output
    dataset = json.loads(ok.output)
    assert (dataset["valid"], dataset["rows"]) == (True, 1)
    s3 = Minio(services.s3.endpoint, services.s3.access_key, services.s3.secret_key, secure=False)
    key = f"tenants/{tenant.tenant_id}/datasets/{dataset['id']}/canonical.jsonl"
    canonical = s3.get_object(services.s3.bucket, key).read()
    assert json.loads(canonical)["messages"][2] == {"role": "assistant", "content": "Hi"}
