"""A throwaway local stack for the benchmarks that need the whole platform (not a benchmark itself).

``temporary_stack()`` runs ``distillery up`` (``distillery.stack.stack.LocalStack``) with a temporary
DISTILLERY_HOME: PostgreSQL, S3, a Ray head and every service, each in its own process as a user gets
them; the platform teacher (llama.cpp) is left off by naming an endpoint of one's own that nothing uses.
It yields the stack's state (stack.json) and home, and runs ``distillery down`` after.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillery.client import Client, api_key, read_json, service_addresses
from distillery.stack.servers import postgres_url
from distillery.stack.stack import PLATFORM_URL_VARIABLE
from distillery.stack.stack import LocalStack as Stack


@dataclass
class RunningStack:
    home: Path
    stack: Stack

    @property
    def state(self) -> dict[str, Any]:
        return read_json(self.home / "stack.json") or {}

    def client(self, timeout: float = 30) -> Client:
        return Client(service_addresses(self.home), api_key(self.home), timeout=timeout)

    @property
    def tenant_id(self) -> str:
        return str(self.state["tenant_id"])

    def database_url(self) -> str:
        state = self.state
        return postgres_url(state["parts"]["postgres"]["ports"]["postgres"], state["secrets"]["postgres_password"])

    def pid(self, part: str) -> int:
        return int(self.state["parts"][part]["pid"])

    def health(self) -> dict[str, str]:
        """Each part's health as ``distillery status`` reports it (SERVING, OFF, NOT_SERVING, DOWN)."""
        return {part.name: part.health for part in self.stack.status() or []}


@contextlib.contextmanager
def temporary_stack(model_roots: str = "") -> Iterator[RunningStack]:
    """``distillery up`` in a temporary home (``model_roots``: DISTILLERY_MODEL_ROOTS for student directories),
    ``distillery down`` after."""
    names = ("DISTILLERY_HOME", PLATFORM_URL_VARIABLE, "DISTILLERY_MODEL_ROOTS")
    saved = {name: os.environ.get(name) for name in names}
    with tempfile.TemporaryDirectory(prefix="dst-bench-", dir="/tmp") as tmp:
        home = Path(tmp) / "home"
        os.environ["DISTILLERY_HOME"] = str(home)
        os.environ[PLATFORM_URL_VARIABLE] = "http://127.0.0.1:9/v1"  # no llama.cpp server: nothing here uses it
        if model_roots:
            os.environ["DISTILLERY_MODEL_ROOTS"] = model_roots
        stack = Stack(home)
        try:
            stack.up()
            yield RunningStack(home, stack)
        finally:
            stack.down()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
