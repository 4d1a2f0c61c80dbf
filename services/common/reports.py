"""Validation reports: violations by line, field, code, message and hint.

A report keeps the first ``KEEP`` violations and warnings in full and counts every
code, so a file with a million bad rows still answers in bounded memory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

KEEP = 100


@dataclass(frozen=True)
class Violation:
    line: int
    field: str
    code: str
    message: str
    hint: str
    entry: str = ""


@dataclass
class Report:
    rows: int = 0
    violations: list[Violation] = field(default_factory=list)
    warnings: list[Violation] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    warning_counts: Counter[str] = field(default_factory=Counter)

    @property
    def valid(self) -> bool:
        return not self.counts and self.rows > 0

    @property
    def violation_count(self) -> int:
        return sum(self.counts.values())

    def add(self, line: int, field: str, code: str, message: str, hint: str, entry: str = "") -> None:
        self.counts[code] += 1
        if len(self.violations) < KEEP:
            self.violations.append(Violation(line, field, code, message, hint, entry))

    def warn(self, line: int, field: str, code: str, message: str, hint: str, entry: str = "") -> None:
        """A finding that does not block training (long rows, near duplicates, few rows)."""
        self.warning_counts[code] += 1
        if len(self.warnings) < KEEP:
            self.warnings.append(Violation(line, field, code, message, hint, entry))

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "rows": self.rows,
            "violations": [asdict(v) for v in self.violations],
            "warnings": [asdict(v) for v in self.warnings],
            "counts": dict(self.counts),
            "warning_counts": dict(self.warning_counts),
        }
