"""The real platform teacher for tests: llama.cpp's server with SmolLM2, started as the local stack starts it.

    with running_platform_teacher(log_dir, api_key="k") as base_url:   # http://127.0.0.1:<port>/v1
        ...

It loads in about 2 s and answers at ~80-110 tokens/s on CPU: keep max tokens small.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distillery.stack import platform_teacher
from distillery.stack.servers import free_port


@contextmanager
def running_platform_teacher(log_dir: Path, api_key: str | None = None) -> Iterator[str]:
    """Start the server on a free port of 127.0.0.1, yield its base URL, stop it on the way out."""
    why_not = platform_teacher.missing()
    if why_not:
        raise RuntimeError(f"the platform teacher cannot run: {why_not}")
    port = free_port()
    proc = platform_teacher.start(port, log_dir / f"platform-{port}.log", api_key)
    try:
        yield platform_teacher.base_url(port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
