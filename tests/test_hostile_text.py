"""Hostile text datasets: each gets its specific code in bounded time and memory (tests/bounded.py).

Every file is built here, then checked by ``text_rows.codes_of`` in a fresh interpreter,
which must answer in under 5 s with under 300 MiB of extra memory.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from bounded import run_bounded

from services.common.reports import Report
from services.ingest import jsonl

MIB = 1024 * 1024
CODES_OF = "services.ingest.text_rows:codes_of"


def pairs_lines(n: int, start: int = 0) -> bytes:
    return b"".join(
        json.dumps({"system_prompt": "Be brief.", "input": f"question {k}", "output": f"answer {k}"}).encode() + b"\n"
        for k in range(start, start + n)
    )


def input_lines(n: int) -> bytes:
    return b"".join(b'{"input": "question %d"}\n' % k for k in range(n))


def csv_records(n: int) -> bytes:
    return b"".join(b"s,question %d,answer\n" % k for k in range(n))


def checked(path: Path, inputs_only: bool = False, csv_format: bool = False) -> list[str]:
    result = run_bounded(CODES_OF, str(path), inputs_only, csv_format)
    assert result.within_bounds(), (result.seconds, result.extra_mib)
    return result.value


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_invalid_utf8_in_jsonl_and_csv(tmp_path):
    assert checked(write(tmp_path, "a.jsonl", pairs_lines(10) + b'{"input": "\xc3\x28"}\n')) == ["invalid_encoding"]
    csv_data = b"system_prompt,input,output\n" + csv_records(10) + b"s,caf\xe9,a\n"
    assert checked(write(tmp_path, "a.csv", csv_data), csv_format=True) == ["invalid_encoding"]


def test_a_bom_and_crlf_line_ends_are_accepted(tmp_path):
    data = b"\xef\xbb\xbf" + pairs_lines(20).replace(b"\n", b"\r\n")
    assert checked(write(tmp_path, "bom.jsonl", data)) == []
    csv_data = b"\xef\xbb\xbfsystem_prompt,input,output\r\n" + b"".join(b"s,q%d,a\r\n" % k for k in range(20))
    assert checked(write(tmp_path, "bom.csv", csv_data), csv_format=True) == []


def test_a_50_mb_line(tmp_path):
    huge = b'{"input": "' + b"x" * (50 * MIB) + b'"}\n'
    assert checked(write(tmp_path, "long.jsonl", pairs_lines(10) + huge + pairs_lines(10, 10))) == ["line_too_long"]
    no_newline = input_lines(10) + b"{" * (50 * MIB)
    assert checked(write(tmp_path, "long2.jsonl", no_newline), inputs_only=True) == ["line_too_long"]


def test_a_50_mb_csv_cell(tmp_path):
    one_line = b"input\n" + b"".join(b"q%d\n" % k for k in range(10)) + b"x" * (50 * MIB) + b"\n"
    assert checked(write(tmp_path, "cell.csv", one_line), True, True) == ["line_too_long"]
    many_lines = (
        b"input\n" + b"".join(b"q%d\n" % k for k in range(10)) + b'"' + (b"x" * 1023 + b"\n") * (50 * 1024) + b'"\n'
    )
    assert checked(write(tmp_path, "cell2.csv", many_lines), True, True) == ["cell_too_long"]


def test_deeply_nested_json(tmp_path):
    deep = b'{"input": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n"
    assert checked(write(tmp_path, "deep.jsonl", pairs_lines(10) + deep)) == ["nested_too_deeply"]
    # within the parser's limit but past Python's recursion limit: read without recursion
    deep_value = b'{"input": ' + b"[" * 1000 + b"]" * 1000 + b"}\n"
    assert checked(write(tmp_path, "deep2.jsonl", input_lines(10) + deep_value), inputs_only=True) == ["wrong_type"]


def test_a_number_with_100k_digits(tmp_path):
    data = pairs_lines(10) + b'{"system_prompt": "s", "input": "i", "output": ' + b"9" * 100_000 + b"}\n"
    assert checked(write(tmp_path, "number.jsonl", data)) == ["number_too_large"]


def test_duplicate_keys_in_one_object(tmp_path):
    rows = [
        b'{"system_prompt": "s", "input": "a", "input": "b", "output": "o"}',
        b'{"system_prompt":"s","input":"a","output":"o","output":"p"}',
        b'{"messages": [{"role": "system", "content": "s", "role": "user"}]}',
    ]
    for k, row in enumerate(rows):
        assert checked(write(tmp_path, f"dup{k}.jsonl", pairs_lines(10) + row + b"\n")) == ["duplicate_key"], row


def test_nul_bytes(tmp_path):
    assert checked(write(tmp_path, "nul.jsonl", pairs_lines(10) + b'{"input": "a\x00b"}\n')) == ["nul_byte"]
    escaped = pairs_lines(10) + b'{"system_prompt": "s", "input": "a\\u0000b", "output": "o"}\n'
    assert checked(write(tmp_path, "nul2.jsonl", escaped)) == ["nul_byte"]
    quoted = input_lines(10) + b'{"input": "\\"x\\"\\u0000"}\n'
    assert checked(write(tmp_path, "nul3.jsonl", quoted), inputs_only=True) == ["nul_byte"]
    nul_csv = b"input\n" + b"".join(b"q%d\n" % k for k in range(10)) + b"a\x00b\n"
    assert checked(write(tmp_path, "nul.csv", nul_csv), True, True) == ["nul_byte"]


def test_mixed_shapes(tmp_path):
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                         {"role": "assistant", "content": "a"}]}  # fmt: skip
    data = pairs_lines(10) + json.dumps(chat).encode() + b"\n"
    assert checked(write(tmp_path, "mixed.jsonl", data)) == ["mixed_shapes"]


def test_formula_cells(tmp_path):
    data = b"input\n" + b"".join(b"question %d\n" % k for k in range(10)) + b'=HYPERLINK("http://x")\n@SUM(A1)\n'
    assert checked(write(tmp_path, "formula.csv", data), True, True) == ["formula_cell"]


def test_a_million_bad_lines_keep_a_bounded_report(tmp_path):
    data = b'{"prompt": "p"}\n' * 300_000
    assert checked(write(tmp_path, "bad.jsonl", data), inputs_only=True) == ["alternate_field_name"]


def test_many_rows_keep_bounded_near_duplicate_memory(tmp_path):
    data = b"".join(b'{"input": "row %d"}\n' % k for k in range(600_000))
    assert checked(write(tmp_path, "many.jsonl", data), inputs_only=True) == []


@pytest.mark.parametrize("block_bytes", [1, 7, 64, 4096])
def test_blocks_number_every_line_and_leave_out_long_ones(block_bytes):
    data = b"\xef\xbb\xbfa\r\n\nbb\n" + b"x" * 40 + b"\nccc\r\n" + b"y" * 41 + b"\nlast"
    report = Report()
    got = [
        (number, line)
        for start, lines in jsonl.blocks(io.BytesIO(data), report, max_line_bytes=40, block_bytes=block_bytes)
        for number, line in enumerate(lines, start)
    ]
    assert got == [(1, b"a"), (2, b""), (3, b"bb"), (4, b"x" * 40), (5, b"ccc"), (7, b"last")]
    assert [(v.line, v.code) for v in report.violations] == [(6, "line_too_long")]
    assert report.rows == 1
