"""Checks of the ids and short strings a request carries, before they reach a query or a log line.

A NUL character in a text column is an error in PostgreSQL (INTERNAL, were it not caught here), and
an id of a megabyte is no id: each check refuses with INVALID_ARGUMENT naming the field.

- ``check_id(value, field)``: "" or an id as the services make them (``ds_...``, ``run_...``): letters,
  digits, ``_ - . :``, at most ``MAX_ID_CHARS``.
- ``check_text(value, field, max_chars)``: a short free string (a key, a name, a path) of at most
  ``max_chars`` characters, without control characters.
- ``check_count(items, field, max_items)``: a repeated field of at most ``max_items`` entries.
"""

from __future__ import annotations

import re
from collections.abc import Sized

from services.common.errors import InvalidArgument

MAX_ID_CHARS = 128
_ID = re.compile(r"[A-Za-z0-9_.:-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_id(value: str, field: str) -> str:
    """``value`` if it is "" or shaped like an id; INVALID_ARGUMENT naming ``field`` otherwise."""
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument(f"{field} is {len(value)} characters long: an id has at most {MAX_ID_CHARS}",
                              field=field)  # fmt: skip
    if not _ID.fullmatch(value):
        raise InvalidArgument(f"{field} {value[:40]!r} is not an id: ids are letters, digits, '_', '-', '.' and ':' "
                              "(e.g. ds_3f2a...), as a list or create call gave them", field=field)  # fmt: skip
    return value


def check_text(value: str, field: str, max_chars: int) -> str:
    """``value`` if it has at most ``max_chars`` characters and no control character (NUL, newline, ...)."""
    if len(value) > max_chars:
        raise InvalidArgument(f"{field} is {len(value)} characters long: give at most {max_chars}", field=field)
    if found := _CONTROL.search(value):
        raise InvalidArgument(f"{field} has a control character ({found.group()!r} at {found.start()}): "
                              "give printable text", field=field)  # fmt: skip
    return value


def check_count(items: Sized, field: str, max_items: int) -> None:
    """INVALID_ARGUMENT naming ``field`` when the repeated field has more than ``max_items`` entries."""
    if len(items) > max_items:
        raise InvalidArgument(f"{field} has {len(items)} entries: give at most {max_items}", field=field)
