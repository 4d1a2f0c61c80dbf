"""Contrastive pairs and vector names, checked (``vectors.py``): a pairs file of the built-in library, the bounds
of a CreateVector request's pairs, a vector's name."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from services.common.errors import InvalidArgument

MIN_PAIRS, MAX_PAIRS = 2, 1000
MAX_TEXT_CHARS = 4000


def read_pairs(path: Path) -> list[tuple[str, str, str]]:
    """Pairs from a JSONL file of {"prompt"?, "positive", "negative"} rows; InvalidArgument naming line and field."""
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise InvalidArgument(f"{path.name} line {number} is not JSON ({err})", field="pairs") from None
        if not isinstance(row, dict):
            raise InvalidArgument(
                f"{path.name} line {number}: give an object with positive and negative", field=f"pairs[{number}]"
            )
        for key in ("positive", "negative", "prompt"):
            value = row.get(key, "")
            if not isinstance(value, str) or (key != "prompt" and not value.strip()):
                raise InvalidArgument(
                    f"{path.name} line {number}: {key} must be a non-empty string", field=f"pairs[{number}].{key}"
                )
        pairs.append((row.get("prompt", ""), row["positive"], row["negative"]))
    return pairs


def check_pairs(pairs: Sequence[tuple[str, str, str]]) -> None:
    if not MIN_PAIRS <= len(pairs) <= MAX_PAIRS:
        raise InvalidArgument(
            f"{len(pairs)} pairs given: give {MIN_PAIRS} to {MAX_PAIRS} contrastive pairs", field="pairs"
        )
    for i, (prompt, positive, negative) in enumerate(pairs):
        for key, text in (("prompt", prompt), ("positive", positive), ("negative", negative)):
            if key != "prompt" and not text.strip():
                raise InvalidArgument(
                    f"pairs[{i}].{key} is empty: give both texts of each pair", field=f"pairs[{i}].{key}"
                )
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidArgument(
                    f"pairs[{i}].{key} has {len(text)} characters: keep each text to {MAX_TEXT_CHARS}",
                    field=f"pairs[{i}].{key}",
                )
        if positive == negative:
            raise InvalidArgument(f"pairs[{i}]: positive and negative are the same text: make them differ",
                                  field=f"pairs[{i}]")  # fmt: skip


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise InvalidArgument(f"vector name {name!r}: use 1-64 letters, digits, '-', '_' or '.'", field="name")
    if name.startswith("vec_"):
        raise InvalidArgument("a vector name cannot start with vec_ (ids do)", field="name")
    return name
