"""Pairs datasets: every rule of "Text dataset formats", through the validator and the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from minio import Minio
from test_tracing_and_cli import cli_env

from distillery.cli.main import cli
from services.ingest import pairs

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


def codes(data: bytes, csv: bool = False) -> list[tuple[int, str, str]]:
    report, _ = pairs.validate(data, csv)
    return [(v.line, v.field, v.code) for v in report.violations]


def test_flat_and_chat_rows_make_the_same_canonical_row():
    report, canonical = pairs.validate(jsonl(FLAT, CHAT), csv_format=False)
    assert report.valid and report.rows == 2
    first, second = (json.loads(line) for line in canonical.splitlines())
    assert first == second == CHAT


def test_field_names_match_case_insensitively_in_json_and_csv():
    shouty = {"SYSTEM_PROMPT": "s", "Input": "i", "OUTPUT": "o"}
    assert pairs.validate(jsonl(shouty), False)[0].valid
    report, canonical = pairs.validate(b'System_Prompt,INPUT,Output\r\n"s, with comma",i,o\r\n', True)
    assert report.valid
    assert json.loads(canonical)["messages"][0]["content"] == "s, with comma"


@pytest.mark.parametrize(
    ("alternate", "wanted"), [("prompt", "input"), ("question", "input"), ("response", "output"), ("answer", "output")]
)
def test_alternate_names_are_refused_with_the_name_to_use(alternate, wanted):
    row = {k: v for k, v in FLAT.items() if k != wanted} | {alternate: "x"}
    report, _ = pairs.validate(jsonl(FLAT, row), False)
    found = [v for v in report.violations if v.code == "alternate_field_name"]
    assert [(v.line, v.field) for v in found] == [(2, alternate)]
    assert f"rename {alternate!r} to {wanted!r}" in found[0].hint
    header = ",".join(alternate if c == wanted else c for c in pairs.REQUIRED)
    csv_report, _ = pairs.validate(f"{header}\na,b,c\n".encode(), True)
    assert ("alternate_field_name", alternate) in {(v.code, v.field) for v in csv_report.violations}


def test_required_fields_and_types():
    rows = jsonl(
        {"system_prompt": "s", "input": "i"},  # no output
        {"input": "i", "output": "o"},  # no system_prompt
        {"system_prompt": "s", "input": 3, "output": "o"},
        {"system_prompt": "s", "input": "  ", "output": "o"},
        [1, 2],
        b"{not json",
    )
    assert codes(rows) == [
        (1, "output", "missing_field"),
        (2, "system_prompt", "missing_field"),
        (3, "input", "wrong_type"),
        (4, "input", "empty_field"),
        (5, "", "not_an_object"),
        (6, "", "invalid_json"),
    ]


def test_messages_need_system_user_and_assistant():
    no_system = {"messages": CHAT["messages"][1:]}
    bad_role = {"messages": [*CHAT["messages"][:2], {"role": "robot", "content": "x"}]}
    ends_with_user = {"messages": [*CHAT["messages"], {"role": "user", "content": "more"}]}
    both = {**CHAT, "input": "i"}
    assert codes(jsonl(no_system, bad_role, ends_with_user, both)) == [
        (1, "messages", "missing_role"),
        (2, "messages[2].role", "invalid_role"),
        (3, "messages", "no_final_answer"),
        (4, "input", "ambiguous_shape"),
    ]


def test_encoding_duplicates_and_empty_files():
    assert codes(jsonl(FLAT) + b'{"input": "\xff"}\n') == [(2, "", "invalid_encoding")]
    assert pairs.validate(b"\xef\xbb\xbf" + jsonl(FLAT), False)[0].valid  # a UTF-8 BOM is fine
    assert codes(jsonl({**FLAT, "INPUT": "again"})) == [(1, "INPUT", "duplicate_field")]
    assert codes(b"\n\n") == [(0, "", "empty_dataset")]
    assert codes(b"system_prompt,input,output\ns,i\n", csv=True) == [(2, "", "wrong_column_count")]


def test_a_report_keeps_100_violations_and_counts_all():
    report, _ = pairs.validate(jsonl(*[{"input": "i"}] * 500), False)
    assert len(report.violations) == 100
    assert report.counts == {"missing_field": 1000}
    assert report.rows == 500 and not report.valid


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
