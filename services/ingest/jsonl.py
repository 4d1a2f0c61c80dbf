"""JSON Lines read safely: one JSON object per line, in bounded time and memory.

Every dataset and manifest goes through ``read_objects`` (or, for speed, ``blocks``
and ``parse_object``). It yields each line's object with its top-level keys folded
to lower case (field names match case-insensitively) and reports, by line, what
cannot be read:

- ``invalid_encoding``: bytes that are not UTF-8 (a leading UTF-8 BOM is fine);
- ``line_too_long``: a line over ``max_line_bytes``, skipped without being held
  in memory;
- ``nul_byte``: a NUL byte, raw or escaped as ``\\u0000``;
- ``invalid_json``, ``nested_too_deeply`` (over 1024 levels), ``number_too_large``;
- ``duplicate_key``: a key twice in one object (JSON parsers silently keep the last);
- ``duplicate_field``: two top-level keys equal after case folding;
- ``not_an_object``: a line holding an array, string or number.

CRLF line ends are accepted. The file is read in blocks of whole lines; the fast
path parses with orjson, and a line that might hold a duplicate key is parsed
again by the standard library, which sees them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

import orjson

from services.common.reports import Report

MAX_LINE_BYTES = 8 * 1024 * 1024
BLOCK_BYTES = 64 * 1024
_BOM = b"\xef\xbb\xbf"
_JSONL_HINT = "write one JSON object per line (JSON Lines)"


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def _count_keys(value: Any) -> int:
    """The keys of every object in ``value``, however deeply nested (without recursion)."""
    keys, stack = 0, [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            keys += len(item)
            stack.extend(v for v in item.values() if type(v) is dict or type(v) is list)
        elif type(item) is list:
            stack.extend(v for v in item if type(v) is dict or type(v) is list)
    return keys


def _surely_unique_keys(raw: bytes, parsed: Any) -> bool:
    """True when the raw line cannot hold a duplicate key.

    Every key ends in a quote followed by a colon or by whitespace, so the count of
    ``":``, ``" ``, ``"\\t`` and ``"\\r`` is at least the number of keys in the raw
    line (quotes inside strings only add to it). If that count equals the keys the
    parser kept, none was dropped.
    """
    keys = _count_keys(parsed)
    bound = raw.count(b'":')
    if bound > keys:
        return False
    if b'" ' in raw or b'"\t' in raw or b'"\r' in raw:
        bound += raw.count(b'" ') + raw.count(b'"\t') + raw.count(b'"\r')
    return bound == keys


def _problem(raw: bytes, err: Exception) -> tuple[str, str, str]:
    """(code, message, hint) for a line that did not parse."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return ("invalid_encoding", f"byte {bad.start} of the line is not valid UTF-8", "save the file as UTF-8")
    text = str(err)
    if "depth limit" in text or isinstance(err, RecursionError):
        return ("nested_too_deeply", "the JSON is nested more than 1024 levels deep", "flatten the row")
    if "number" in text and ("infinity" in text or "digits" in text):
        return ("number_too_large", "a number has too many digits to read", "write long numbers as strings")
    message = text.split(": line ")[0] if text else "not valid JSON"
    return ("invalid_json", f"the line is not valid JSON: {message}", _JSONL_HINT)


def _too_long(report: Report, number: int, max_line_bytes: int) -> None:
    report.rows += 1
    report.add(number, "", "line_too_long", f"the line is longer than {max_line_bytes} bytes",
               "split the row, or raise DISTILLERY_MAX_LINE_BYTES")  # fmt: skip


def _rest_after_line(f: IO[bytes], block_bytes: int) -> bytes:
    """Read past the end of the current line; return what follows its newline in the block read last."""
    while True:
        block = f.read(block_bytes)
        end = block.find(b"\n")
        if end >= 0:
            return block[end + 1 :]
        if not block:
            return b""


def _runs(lines: list[bytes], number: int, report: Report, max_line_bytes: int) -> Iterator[tuple[int, list[bytes]]]:
    """The runs of ``lines`` between those over the limit, which are reported in their place."""
    start = 0
    for i, line in enumerate(lines):
        if len(line) > max_line_bytes:
            if i > start:
                yield number + start, lines[start:i]
            _too_long(report, number + i, max_line_bytes)
            start = i + 1
    if start < len(lines):
        yield number + start, lines[start:]


def blocks(
    f: IO[bytes], report: Report, max_line_bytes: int = MAX_LINE_BYTES, block_bytes: int = BLOCK_BYTES
) -> Iterator[tuple[int, list[bytes]]]:
    """The file's lines in blocks of about ``block_bytes``: (number of the block's first line, its lines).

    A leading BOM is dropped and CRLF becomes LF; lines come without their newline
    and blank ones are kept, so a block's lines are ``enumerate(lines, start)``.
    A line over ``max_line_bytes`` is reported as ``line_too_long`` (and counted in
    ``report.rows``) between the blocks around it, and never held in memory whole.
    Small blocks keep the working set in cache and the allocator from returning
    memory to the system between blocks.
    """
    number, head_bytes = 1, 0
    head: list[bytes] = []  # the start of a line whose end is not read yet
    chunk = f.read(max(block_bytes, len(_BOM)))
    if chunk.startswith(_BOM):
        chunk = chunk[len(_BOM) :] or f.read(block_bytes)
    while chunk or head:
        cut = chunk.rfind(b"\n") + 1 if chunk else len(chunk)  # at the end of the file the last line is whole
        if cut or not chunk:
            body = b"".join((*head, chunk[:cut])) if head else chunk[:cut]
            head, head_bytes = ([chunk[cut:]], len(chunk) - cut) if cut < len(chunk) else ([], 0)
            if b"\r" in body:
                body = body.replace(b"\r\n", b"\n").removesuffix(b"\r")
            lines = body.split(b"\n")
            if body.endswith(b"\n"):
                lines.pop()
            if len(body) <= max_line_bytes:
                yield number, lines
            else:
                yield from _runs(lines, number, report, max_line_bytes)
            number += len(lines)
        else:
            head.append(chunk)
            head_bytes += len(chunk)
        if head_bytes > max_line_bytes:
            _too_long(report, number, max_line_bytes)
            number, head, head_bytes = number + 1, [], 0
            chunk = _rest_after_line(f, block_bytes) or f.read(block_bytes)
        elif chunk:
            chunk = f.read(block_bytes)


def lines(f: IO[bytes], report: Report, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers, BOM and CR stripped; over-long lines reported and skipped."""
    for start, block in blocks(f, report, max_line_bytes):
        for number, raw in enumerate(block, start):
            if raw.strip():
                yield number, raw


def parse_object(raw: bytes, number: int, report: Report) -> dict[str, Any] | None:
    """One line's JSON object with top-level keys folded to lower case, or None after reporting why not."""
    if b"\x00" in raw:
        report.add(number, "", "nul_byte", "the line holds a NUL byte", "remove NUL characters from the text")
        return None
    try:
        obj = orjson.loads(raw)
    except ValueError as err:
        code, message, hint = _problem(raw, err)
        report.add(number, "", code, message, hint)
        return None
    return checked_object(raw, obj, number, report)


def checked_object(raw: bytes, obj: Any, number: int, report: Report) -> dict[str, Any] | None:
    """``parse_object`` for a line orjson has already parsed into ``obj``."""
    if b"\\u0000" in raw:
        report.add(number, "", "nul_byte", "the line holds a NUL byte", "remove NUL characters from the text")
        return None
    if not _surely_unique_keys(raw, obj):
        try:
            obj = json.loads(raw, object_pairs_hook=_no_duplicates)
        except DuplicateKey as dup:
            report.add(number, dup.key, "duplicate_key", f"the key {dup.key!r} appears twice in one object",
                       "keep one of them")  # fmt: skip
            return None
        except (ValueError, RecursionError) as err:
            code, message, hint = _problem(raw, err)
            report.add(number, "", code, message, hint)
            return None
    if type(obj) is not dict:
        report.add(number, "", "not_an_object", "the line is not a JSON object", _JSONL_HINT)
        return None
    if all(key == key.lower() for key in obj):
        return obj
    folded: dict[str, Any] = {}
    for key, value in obj.items():
        low = key.lower()
        if low in folded:
            report.add(number, key, "duplicate_field", f"the field {low!r} appears more than once in this row",
                       "keep one of them (names match case-insensitively)")  # fmt: skip
            return None
        folded[low] = value
    return folded


def read_objects(
    f: IO[bytes], report: Report, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each readable line; counts every non-blank line in ``report.rows``."""
    for number, raw in lines(f, report, max_line_bytes):
        report.rows += 1
        obj = parse_object(raw, number, report)
        if obj is not None:
            yield number, obj
