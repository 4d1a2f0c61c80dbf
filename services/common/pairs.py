"""When two chat pairs are the same pair: one definition for the teacher (which drops a generated
pair that repeats another) and the trainer (which drops an augmented pair that repeats an eval row)."""

from __future__ import annotations

import re
from typing import Any

_NOT_WORD = re.compile(r"\W+")


def pair_key(messages: list[dict[str, Any]]) -> str:
    """Two pairs with the same key are duplicates: case, spacing and punctuation aside.

    ``messages`` is a pair as the teacher writes it (system, user, assistant): the key is made of
    the user and assistant turns."""
    return " ".join(_NOT_WORD.sub(" ", m["content"].casefold()).strip() for m in messages[1:3])
