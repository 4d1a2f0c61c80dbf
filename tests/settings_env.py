"""Which environment variables each service reads, taken from its code rather than from a list kept by hand.

``reads(service)`` runs the service's own ``Settings.from_env()`` (services/<name>/settings.py, with the shared
pieces of services/common/settings.py and whatever else it calls) against an environment that records every
lookup: dynamic names (the teacher's DISTILLERY_<PROVIDER>_* variables) included. A variable whose absence makes
``from_env`` refuse to start is *required*; the recording is run again with a stand-in value for it until
``from_env`` accepts the environment, so every required variable and every optional one is seen.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from services.common.errors import DistilleryError

# Only the platform's own variables: HOME, SSL_CERT_FILE and the like are the image's business, not the chart's.
PREFIX = "DISTILLERY_"


@dataclass(frozen=True)
class SettingsReads:
    read: frozenset[str]  # every DISTILLERY_* variable from_env() looks at
    required: frozenset[str]  # those from_env() refuses to start without


class _RecordingEnviron(dict[str, str]):
    """A stand-in for os.environ that notes every name looked up, in order."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.looked_up: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.looked_up.append(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.looked_up.append(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.looked_up.append(key)
        return super().__contains__(key)


@contextmanager
def _environ(recording: _RecordingEnviron) -> Iterator[None]:
    saved = os.environ
    # Replaced, not changed: the process's real environment stays as it was (B003 is the point here).
    os.environ = recording  # type: ignore[assignment]  # noqa: B003
    try:
        yield
    finally:
        os.environ = saved  # noqa: B003


def reads(service: str) -> SettingsReads:
    """Run services.<service>.settings.Settings.from_env() under a recording environment."""
    settings = importlib.import_module(f"services.{service}.settings").Settings
    given: dict[str, str] = {}
    required: set[str] = set()
    while True:
        recording = _RecordingEnviron(dict(given))
        try:
            with _environ(recording):
                settings.from_env()
        except DistilleryError as err:
            missing = [name for name in recording.looked_up if name not in given and name.startswith(PREFIX)]
            assert missing and missing[-1] in err.message, (
                f"services.{service}.settings refused an environment for another reason than a missing "
                f"variable: {err.message}"
            )
            required.add(missing[-1])
            given[missing[-1]] = "stand-in"
            continue
        names = {name for name in recording.looked_up if name.startswith(PREFIX)}
        return SettingsReads(frozenset(names), frozenset(required))
