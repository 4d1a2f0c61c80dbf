"""The platform teacher for real: llama.cpp's server with SmolLM2-135M-Instruct, through the teacher's adapter.

One server for the session (started as the local stack starts it, ~2 s), with an
API key, spoken to through ``PROVIDERS["platform"]`` as the teacher speaks to it.
Answers stay a few dozen tokens (~100 tokens/s on CPU here).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import psutil
import pytest

from distillery.stack import platform_teacher
from distillery.stack.servers import free_port
from services.teacher.providers import PROVIDERS
from services.teacher.providers.base import Completion, Credentials, ProviderError, Request
from tests.platform_teacher import running_platform_teacher

KEY = "platform-test-key-0123456789"
PLATFORM = PROVIDERS["platform"]


@pytest.fixture(scope="session")
def platform_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_platform_teacher(tmp_path_factory.mktemp("platform"), api_key=KEY) as url:
        yield url


def complete(url: str, request: Request, api_key: str = KEY) -> Completion:
    async def call() -> Completion:
        client = PLATFORM.connect(Credentials(api_key=api_key, base_url=url))
        try:
            return await PLATFORM.complete(client, request)  # type: ignore[no-any-return]
        finally:
            await PLATFORM.close(client)

    return asyncio.run(call())


def check(url: str, api_key: str) -> None:
    async def call() -> None:
        client = PLATFORM.connect(Credentials(api_key=api_key, base_url=url))
        try:
            await PLATFORM.check(client)
        finally:
            await PLATFORM.close(client)

    asyncio.run(call())


def ask(content: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": content}]


def test_answers_with_token_usage(platform_url: str) -> None:
    answer = complete(platform_url, Request(model="smollm2", messages=ask("What is the capital of France?"),
                                            max_output_tokens=24, temperature=0.0))  # fmt: skip
    assert answer.text.strip()
    assert answer.tool_calls == []
    assert answer.input_tokens > 10  # the system and user messages, in SmolLM2's chat template
    assert 0 < answer.output_tokens <= 24
    assert answer.finish_reason in ("stop", "length")


def test_max_output_tokens_cuts_the_answer(platform_url: str) -> None:
    answer = complete(platform_url, Request(model="smollm2", messages=ask("Write a long story about a cat."),
                                            max_output_tokens=5, temperature=0.0))  # fmt: skip
    assert answer.output_tokens == 5
    assert answer.finish_reason == "length"


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
        "colour": {"enum": ["red", "green", "blue"]},
        "member": {"type": "boolean"},
    },
    "required": ["name", "age", "colour", "member"],
    "additionalProperties": False,
}


def test_structured_output_follows_the_schema(platform_url: str) -> None:
    request = Request(model="smollm2", messages=ask("Describe a person called Ann who likes the sea, as JSON."),
                      response_schema=PERSON, max_output_tokens=60, temperature=0.0)  # fmt: skip
    answer = complete(platform_url, request)
    assert answer.finish_reason == "stop", answer
    document = json.loads(answer.text)
    jsonschema.validate(document, PERSON)


def test_check_accepts_the_key_and_refuses_another(platform_url: str) -> None:
    check(platform_url, KEY)
    with pytest.raises(ProviderError) as refused:
        check(platform_url, "not-the-key")
    assert refused.value.kind == "auth" and refused.value.job_fatal
    assert "not-the-key" not in str(refused.value)


def test_health_while_generating(platform_url: str) -> None:
    """/v1/models waits for the model while a generation runs: the check still finds the server alive."""
    assert platform_teacher.health(platform_url, KEY)[0] is True  # idle, or still busy with an earlier request
    assert platform_teacher.health(platform_url, "not-the-key")[0] is False
    body = {"messages": ask("Tell a story."), "max_tokens": 300, "min_tokens": 300}  # ~3 s
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    request = urllib.request.Request(f"{platform_url}/chat/completions", json.dumps(body).encode(), headers)
    generation = threading.Thread(target=lambda: urllib.request.urlopen(request, timeout=60).read())
    generation.start()
    checks: list[tuple[bool, str]] = []
    try:
        while generation.is_alive() and (True, "busy generating") not in checks:
            checks.append(platform_teacher.health(platform_url, KEY, timeout_s=0.5))
    finally:
        generation.join()
    assert (True, "busy generating") in checks, checks
    assert all(ok for ok, _ in checks), checks


# A server as a build for another CPU was: it lists its model, and its first completion kills it with SIGILL.
_DIES_ON_GENERATE = """
import http.server, json, os, signal, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "smollm2", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        os.kill(os.getpid(), signal.SIGILL)

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def test_a_server_that_cannot_generate_is_never_healthy(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "dies.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _DIES_ON_GENERATE, str(port)], stdout=out, stderr=out)
    try:
        url = platform_teacher.base_url(port)
        with pytest.raises(RuntimeError, match=r"exited with code -4"):
            platform_teacher.wait_ready(proc, url, None, log, timeout_s=20)
        ok, why = platform_teacher.health(url, None)
        assert not ok and "one-token completion" in why, why
    finally:
        proc.kill()
        proc.wait()


def test_server_ignores_settings_in_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp's server reads HOST, PORT and API_KEY from the environment, over its flags: none may leak in."""
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "1")
    monkeypatch.setenv("API_KEY", "from-the-environment")
    with running_platform_teacher(tmp_path) as url:
        assert platform_teacher.health(url, None)[0] is True  # no key asked for
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        listeners = [c.laddr for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
                     and c.laddr.port == port]  # fmt: skip
        assert [address.ip for address in listeners] == ["127.0.0.1"]
        assert os.environ["HOST"] == "0.0.0.0"  # the test's own environment was left alone


def test_missing_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    assert platform_teacher.missing() is None
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    why = platform_teacher.missing()
    assert why is not None and "llama_cpp" in why and "platform-teacher" in why
