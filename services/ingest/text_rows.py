"""Text datasets, input-output pairs and input-only rows: reading, warnings and the canonical form.

The training page's "Text dataset formats"; per row, one of:

- pairs, JSONL flat:      {"system_prompt": ..., "input": ..., "output": ...}
- pairs, JSONL messages:  {"messages": [system, user, assistant]} (more turns may follow; the last is the assistant's)
- pairs, CSV:             a header ``system_prompt,input,output`` and one record per row
- inputs, JSONL flat:     {"input": ...}
- inputs, JSONL messages: {"messages": [{"role": "user", "content": ...}]}
- inputs, CSV:            one column, ``input``

The rules for one row are in ``text_rules``; unreadable lines are reported as
``jsonl`` says. Every valid row becomes one canonical line, ``{"messages": [system,
user, assistant]}`` or ``{"messages": [user]}``. Warnings never block training:

- ``long_row``: estimated tokens (characters / 4) over ``TextLimits.context_tokens``;
- ``near_duplicate``: the row's canonical line equals an earlier one's once ASCII
  letters are lower-cased and every other ASCII character but digits (whitespace,
  punctuation, symbols) is dropped. Other characters compare as they are, and a JSON
  escape keeps its letter (a line break inside a text counts as "n"): one C call over
  a block's lines, where undoing escapes would cost a pass per row. The first
  ``near_duplicate_rows`` distinct rows are kept as 8-byte hashes with their line
  (about 130 bytes each in memory);
- ``few_rows``: under 10 rows; ``mixed_shapes``: flat and messages rows in one file;
- ``formula_cell``: a CSV cell starting with = + - or @: stored as text, which is safe
  here, but a spreadsheet opening the file would run it.

Speed: JSONL comes in blocks of whole lines (``jsonl.blocks``). A flat row in the
expected shape takes a fast path: one parse, its canonical line from a reused
template, and duplicate keys ruled out by length (the canonical line gives the
shortest JSON holding the row; a duplicate member would make the raw line at least
``_MEMBER`` bytes longer). Other lines take the general path: ``jsonl.checked_object``
then the rules. Warnings are worked out per block, in a few calls over all its lines.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

from services.common.reports import Report
from services.ingest import jsonl
from services.ingest.text_rules import ALTERNATES, PAIRS_FIELDS, Messages, Rules

FORMULA_STARTS = "=+-@"
FEW_ROWS = 10
CHARS_PER_TOKEN = 4

# A duplicate member (``,"input":0`` at the least) adds this many bytes to a line.
_MEMBER = len(b',"input":0')
_CSV_BLOCK_ROWS = 1024
_FORMULA_HINT = "it is kept as plain text and safe here; take care opening the file in a spreadsheet"
_REPEAT_HINT = "remove one of them: repeated rows weigh more in training"
_LONG_HINT = "shorten it, or raise the context size: training cuts rows at the context"
# Near-duplicate keys, from a block's canonical lines joined by newlines (which no canonical line holds):
# ASCII letters folded to lower case, every other ASCII byte but digits and the newline dropped.
_FOLD = bytes(range(65)) + bytes(range(97, 123)) + bytes(range(91, 256))
_DROP = bytes(c for c in range(128) if not chr(c).isalnum() and c != ord("\n"))


@dataclass(frozen=True)
class TextLimits:
    max_line_bytes: int = jsonl.MAX_LINE_BYTES  # per JSONL line, CSV line and CSV cell
    context_tokens: int = 2048  # rows estimated longer than this get a warning
    near_duplicate_rows: int = 1_000_000  # distinct rows remembered for near-duplicate warnings


def validate_text(
    f: IO[bytes], out: IO[bytes], *, inputs_only: bool, csv_format: bool, limits: TextLimits = TextLimits()
) -> Report:
    """Check a text dataset streamed from ``f`` and write each valid row's canonical line to ``out``,
    which only means something when the report is valid (writing stops at the first violation)."""
    check = _Check(out, inputs_only, limits)
    if csv_format:
        check.csv(f)
    else:
        check.jsonl(f)
    return check.finish()


def codes_of(path: str, inputs_only: bool, csv_format: bool) -> list[str]:
    """The violation and warning codes of a file (for the hostile-input tests)."""
    with open(path, "rb") as f, open(os.devnull, "wb") as out:
        report = validate_text(f, out, inputs_only=inputs_only, csv_format=csv_format)
    return sorted({*report.counts, *report.warning_counts})


def _template(inputs_only: bool) -> tuple[dict[str, Any], Messages]:
    """A canonical row to fill in place: the object and its messages."""
    messages = [
        {"role": role, "content": ""} for role in (("user",) if inputs_only else ("system", "user", "assistant"))
    ]
    return {"messages": messages}, messages


class _Check:
    """One validation: the report, what the warnings need, and the canonical lines of the current block."""

    def __init__(self, out: IO[bytes], inputs_only: bool, limits: TextLimits) -> None:
        self.out, self.inputs_only, self.limits = out, inputs_only, limits
        self.report = Report()
        self.rules = Rules(inputs_only, self.report.add)
        self.max_chars = limits.context_tokens * CHARS_PER_TOKEN
        self.seen: dict[int, int] = {}  # near-duplicate key hash -> first line
        self.shapes: dict[str, int] = {}  # "flat" / "messages" -> first line
        # The current block: canonical lines and their line numbers.
        self.canonical: list[bytes] = []
        self.numbers: list[int] = []
        template, _ = _template(inputs_only)
        flat = orjson.dumps(dict.fromkeys(self.rules.required, ""))
        self.flat_extra = len(orjson.dumps(template)) - len(flat)  # canonical line minus flat line, same texts

    # -- JSONL ---------------------------------------------------------------------------------

    def jsonl(self, f: IO[bytes]) -> None:
        fast = self._inputs_block if self.inputs_only else self._pairs_block
        for start, lines in jsonl.blocks(f, self.report, self.limits.max_line_bytes):
            blank = fast(start, lines)
            self.report.rows += len(lines) - blank
            self._end_block()

    def _pairs_block(self, start: int, lines: list[bytes]) -> int:
        """The fast path for flat pairs rows; other lines go to ``_slow``. Returns the number of blank lines."""
        loads, dumps, keep, kept_at = orjson.loads, orjson.dumps, self.canonical.append, self.numbers.append
        template, (system, user, assistant) = _template(False)
        short, blank, first = _MEMBER - self.flat_extra, 0, 0
        for number, raw in enumerate(lines, start):
            obj = None
            try:  # a dict of exactly the three fields, each a non-blank string (of the JSON types, str alone has strip)
                obj = loads(raw)
                s, i, o = obj["system_prompt"], obj["input"], obj["output"]
                fast = len(obj) == 3 and s.strip() and i.strip() and o.strip()
            except (ValueError, LookupError, TypeError, AttributeError):
                fast = False
            if fast:
                system["content"], user["content"], assistant["content"] = s, i, o
                line = dumps(template)
                if len(raw) - len(line) < short:  # too short to hold a duplicate key
                    if b"\\" in line and ("\x00" in s or "\x00" in i or "\x00" in o):  # the rules report it
                        blank += self._slow(number, raw, obj)
                        continue
                    keep(line)
                    kept_at(number)
                    first = first or number
                    continue
            blank += self._slow(number, raw, obj)
        self._flat_from(first)
        return blank

    def _inputs_block(self, start: int, lines: list[bytes]) -> int:
        """``_pairs_block`` for input-only rows: ``{"input": ...}``."""
        loads, dumps, keep, kept_at = orjson.loads, orjson.dumps, self.canonical.append, self.numbers.append
        template, (user,) = _template(True)
        short, blank, first = _MEMBER - self.flat_extra, 0, 0
        for number, raw in enumerate(lines, start):
            obj = None
            try:
                obj = loads(raw)
                i = obj["input"]
                fast = len(obj) == 1 and i.strip()
            except (ValueError, LookupError, TypeError, AttributeError):
                fast = False
            if fast:
                user["content"] = i
                line = dumps(template)
                if len(raw) - len(line) < short:
                    if b"\\" in line and "\x00" in i:
                        blank += self._slow(number, raw, obj)
                        continue
                    keep(line)
                    kept_at(number)
                    first = first or number
                    continue
            blank += self._slow(number, raw, obj)
        self._flat_from(first)
        return blank

    def _flat_from(self, first: int) -> None:
        if first:
            self.shapes["flat"] = min(first, self.shapes.get("flat", first))

    def _slow(self, number: int, raw: bytes, obj: Any) -> int:
        """A line off the fast path: a blank line (returns 1), an unreadable one, or a row for the rules."""
        if obj is None:
            if not raw.strip():
                return 1
            jsonl.parse_object(raw, number, self.report)  # fails again, or reads null; says why
            return 0
        row = jsonl.checked_object(raw, obj, number, self.report)
        if row is None:
            return 0
        if "messages" in row:
            both = [name for name in (*PAIRS_FIELDS, *ALTERNATES) if name in row]
            if both:
                self.report.add(number, both[0], "ambiguous_shape", "the row has both 'messages' and flat fields",
                                "pick one shape per row: 'messages', or flat fields")  # fmt: skip
                return 0
            self._keep(number, self.rules.messages(row["messages"], number), "messages")
        else:
            self._keep(number, self.rules.flat(row, number), "flat")
        return 0

    # -- CSV -----------------------------------------------------------------------------------

    def csv(self, f: IO[bytes]) -> None:
        old = csv.field_size_limit(self.limits.max_line_bytes)  # process-wide: every caller sets the same limit
        try:
            self._csv(_CsvLines(f, self.report, self.limits.max_line_bytes))
        finally:
            csv.field_size_limit(old)

    def _csv(self, lines: _CsvLines) -> None:
        reader = csv.reader(lines, strict=True)
        record: list[str] | None = []
        while record == []:  # blank lines before the header
            record = self._record(reader, lines, counted=False)
        if record is None:
            return
        columns = [cell.strip().lower() for cell in record]
        usable = self.rules.header(columns)
        while (record := self._record(reader, lines, counted=True)) is not None:
            number = lines.record_start
            if not any(cell.strip() for cell in record):
                continue
            self.report.rows += 1
            if not usable:
                continue
            if len(record) != len(columns):
                self.report.add(number, "", "wrong_column_count",
                                f"the record has {len(record)} cells, the header {len(columns)}",
                                "give every record one cell per column")  # fmt: skip
                continue
            for name, cell in zip(columns, record, strict=True):
                if cell and cell[0] in FORMULA_STARTS:
                    message = f"the cell starts with {cell[0]!r}: a spreadsheet opening this file would run it"
                    self.report.warn(number, name, "formula_cell", message, _FORMULA_HINT)
            self._keep(number, self.rules.flat(dict(zip(columns, record, strict=True)), number), "flat")
            if len(self.canonical) >= _CSV_BLOCK_ROWS:
                self._end_block()

    def _record(self, reader: Iterator[list[str]], lines: _CsvLines, counted: bool) -> list[str] | None:
        """The next record, or None at the end or after reporting why the rest cannot be read."""
        lines.record_start = lines.number + 1
        try:
            return next(reader)
        except StopIteration:
            return None
        except csv.Error as err:
            self.report.rows += counted
            if "field larger than field limit" in str(err):
                self.report.add(lines.record_start, "", "cell_too_long", f"a cell is longer than "
                                f"{self.limits.max_line_bytes} bytes", "shorten the cell, or raise "
                                "DISTILLERY_MAX_LINE_BYTES")  # fmt: skip
            else:
                self.report.add(lines.record_start, "", "invalid_csv", f"the record is not valid CSV: {err}",
                                "quote cells that hold commas, quotes or line breaks")  # fmt: skip
            return None

    # -- rows kept, warnings -------------------------------------------------------------------

    def _keep(self, number: int, messages: Messages | None, shape: str) -> None:
        """A row off the fast path that passed the rules (``messages`` is None if it did not)."""
        if messages is None:
            return
        self.canonical.append(orjson.dumps({"messages": messages}))
        self.numbers.append(number)
        self.shapes.setdefault(shape, number)

    def _end_block(self) -> None:
        """Write the block's canonical lines and warn about its long and near-duplicate rows."""
        canonical, numbers = self.canonical, self.numbers
        if not canonical:
            return
        data = b"\n".join(canonical)
        if not self.report.counts:
            self.out.write(data)
            self.out.write(b"\n")
        self._near_duplicates(data.translate(_FOLD, _DROP).split(b"\n"), numbers)
        if max(map(len, canonical)) > self.max_chars + self.flat_extra:  # a line is at least as long as its text
            for line, number in zip(canonical, numbers, strict=True):
                chars = sum(len(m["content"]) for m in orjson.loads(line)["messages"])
                if chars > self.max_chars:
                    tokens, limit = chars // CHARS_PER_TOKEN, self.limits.context_tokens
                    message = f"the row is about {tokens} tokens (characters / 4), over the context of {limit}"
                    self.report.warn(number, "", "long_row", message, _LONG_HINT)
        canonical.clear()
        numbers.clear()

    def _near_duplicates(self, keys: list[bytes], numbers: list[int]) -> None:
        seen = self.seen
        remember = seen.setdefault if len(seen) < self.limits.near_duplicate_rows else seen.get
        firsts = list(map(remember, map(hash, keys), numbers))  # each key's first line
        if firsts != numbers:
            for number, first in zip(numbers, firsts, strict=True):
                if first != number:
                    message = f"the row repeats line {first} once case, whitespace and punctuation are ignored"
                    self.report.warn(number, "", "near_duplicate", message, _REPEAT_HINT)

    def finish(self) -> Report:
        self._end_block()
        report = self.report
        if report.rows == 0 and not report.counts:
            report.add(0, "", "empty_dataset", "the file has no rows", "add at least one row")
        if 0 < report.rows < FEW_ROWS:
            report.warn(0, "", "few_rows", f"only {report.rows} rows", "a few hundred varied rows train far better")
        if len(self.shapes) > 1:
            (one, first), (other, second) = sorted(self.shapes.items(), key=lambda item: item[1])
            report.warn(second, "", "mixed_shapes", f"line {first} has the {one} shape and line {second} the {other}"
                        " shape", "both are accepted; one shape per file is easier to read and check")  # fmt: skip
        return report


class _CsvLines:
    """Decoded lines for ``csv.reader`` (BOM dropped, CRLF as LF), ending at the first line that cannot be
    read: over the line limit (reported by ``jsonl.blocks``), not UTF-8, or holding a NUL byte.
    ``number`` is the last line given; ``record_start`` the first line of the record being read."""

    def __init__(self, f: IO[bytes], report: Report, max_line_bytes: int) -> None:
        self.f, self.report, self.max_line_bytes = f, report, max_line_bytes
        self.number = self.record_start = 0

    def __iter__(self) -> Iterator[str]:
        for start, lines in jsonl.blocks(self.f, self.report, self.max_line_bytes):
            if start != self.number + 1:  # a line over the limit was left out
                return
            for number, raw in enumerate(lines, start):
                if b"\x00" in raw:
                    self.report.add(number, "", "nul_byte", "the line holds a NUL byte",
                                    "remove NUL characters from the text")  # fmt: skip
                    return
                try:
                    text = raw.decode()
                except UnicodeDecodeError as bad:
                    self.report.add(number, "", "invalid_encoding", f"byte {bad.start} of the line is not valid "
                                    "UTF-8", "save the file as UTF-8")  # fmt: skip
                    return
                self.number = number
                yield text + "\n"
