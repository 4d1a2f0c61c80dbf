"""JSON Lines read safely: one JSON object per line, in bounded time and memory.

Every dataset and manifest goes through ``read_objects``. It yields each line's
object with its top-level keys folded to lower case (field names match
case-insensitively) and reports, by line, what cannot be read:

- ``invalid_encoding``: bytes that are not UTF-8 (a leading UTF-8 BOM is fine);
- ``line_too_long``: a line over ``max_line_bytes``, skipped without being held
  in memory;
- ``nul_byte``: a NUL byte, raw or escaped as ``\\u0000``;
- ``invalid_json``, ``nested_too_deeply`` (over 1024 levels), ``number_too_large``;
- ``duplicate_key``: a key twice in one object (JSON parsers silently keep the last);
- ``duplicate_field``: two top-level keys equal after case folding;
- ``not_an_object``: a line holding an array, string or number.

CRLF line ends are accepted. The fast path parses with orjson; a line that might
hold a duplicate key is parsed again by the standard library, which sees them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

import orjson

from services.ingest.reports import Report

MAX_LINE_BYTES = 8 * 1024 * 1024
_SKIP_BLOCK = 1024 * 1024
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
    if isinstance(value, dict):
        return len(value) + sum(_count_keys(v) for v in value.values() if isinstance(v, dict | list))
    if isinstance(value, list):
        return sum(_count_keys(v) for v in value if isinstance(v, dict | list))
    return 0


def _surely_unique_keys(raw: bytes, parsed: Any) -> bool:
    """True when the raw line cannot hold a duplicate key.

    With no escaped quote and no space before a colon, every key ends in ``":``,
    and ``":`` is counted at least once per key (a string value that starts with
    ``:`` adds to the count, never takes from it). So if the count equals the keys
    the parser kept, none was dropped.
    """
    if b'\\"' in raw or b'" :' in raw or b'"\t:' in raw or b'"\r:' in raw:
        return False
    return raw.count(b'":') == _count_keys(parsed)


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


def _skip_rest_of_line(f: IO[bytes]) -> None:
    while True:
        block = f.readline(_SKIP_BLOCK)
        if not block or block.endswith(b"\n"):
            return


def lines(f: IO[bytes], report: Report, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers, BOM and CR stripped; over-long lines reported and skipped."""
    number = 0
    while True:
        raw = f.readline(max_line_bytes + 1)
        if not raw:
            return
        number += 1
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            _skip_rest_of_line(f)
            report.rows += 1
            report.add(number, "", "line_too_long", f"the line is longer than {max_line_bytes} bytes",
                       "split the row, or raise DISTILLERY_MAX_LINE_BYTES")  # fmt: skip
            continue
        raw = raw.rstrip(b"\r\n")
        if raw.strip():
            yield number, raw


def parse_object(raw: bytes, number: int, report: Report) -> dict[str, Any] | None:
    """One line's JSON object with top-level keys folded to lower case, or None after reporting why not."""
    if b"\x00" in raw or b"\\u0000" in raw:
        report.add(number, "", "nul_byte", "the line holds a NUL byte", "remove NUL characters from the text")
        return None
    try:
        obj = orjson.loads(raw)
        if not _surely_unique_keys(raw, obj):
            obj = json.loads(raw, object_pairs_hook=_no_duplicates)
    except DuplicateKey as dup:
        report.add(number, dup.key, "duplicate_key", f"the key {dup.key!r} appears twice in one object",
                   "keep one of them")  # fmt: skip
        return None
    except (ValueError, RecursionError) as err:
        code, message, hint = _problem(raw, err)
        report.add(number, "", code, message, hint)
        return None
    if not isinstance(obj, dict):
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
