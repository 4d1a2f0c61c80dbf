"""stack.json: what the local stack records, and the settings each service gets from it.

    {"version": 1, "home": ..., "stack_id": ...,
     "secrets": {"postgres_password", "s3_access_key", "s3_secret_key", "admin_token", "master_key",
                 "service_token", "platform_api_key"},
     "tenant_id": the dev tenant,
     "parts": {"postgres": {"address": "127.0.0.1:P", "pid": N, "create_time": T, "ports": {...}, "log": ...},
               "s3": {..., "bucket"}, "ray": {..., "dashboard": "http://127.0.0.1:D", "token_file", "temp_dir"},
               "registry": {..., "config": settings fingerprint}, "ingest": ..., "teacher": ..., "trainer": ...,
               "gateway": {..., "ports": {"grpc", "http"}, "url": "http://127.0.0.1:H"} (the OpenAI-compatible
                          endpoint is url + "/v1"; ``gateway_url()`` reads it),
               "platform": {..., "base_url": "http://127.0.0.1:P/v1"} or {"external": URL, "ports": {}}}}

Secrets are made on the first ``up`` and kept, so later ones find the data they
protect. The file is written atomically and readable by its owner only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from distillery.stack import ray_head
from distillery.stack.processes import ProcessRef
from distillery.stack.servers import free_port, postgres_url
from distillery.tokens import new_admin_token, new_service_token

PARTS = ("postgres", "s3", "ray", "registry", "ingest", "teacher", "platform", "trainer", "gateway")
SERVICES = ("registry", "ingest", "teacher", "trainer", "gateway")
BUCKET = "distillery"
# The gateway's HTTP address in the services' addresses (host:port): DISTILLERY_GATEWAY_HTTP_ADDRESS.
GATEWAY_HTTP = "gateway_http"
GATEWAY_URL_VARIABLE = "DISTILLERY_GATEWAY_URL"

State = dict[str, Any]


def new_state(home: Path) -> State:
    return {
        "version": 1,
        "home": str(home),
        "stack_id": secrets.token_hex(8),
        "secrets": {
            "postgres_password": secrets.token_urlsafe(24),
            "s3_access_key": "DST" + secrets.token_hex(8).upper(),
            "s3_secret_key": secrets.token_urlsafe(30),
            "admin_token": new_admin_token(),
            "master_key": base64.b64encode(os.urandom(32)).decode(),
            "service_token": new_service_token(),
            "platform_api_key": secrets.token_urlsafe(24),
        },
        "tenant_id": None,
        "parts": {},
    }


def load(path: Path) -> State | None:
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(state, dict) or "secrets" not in state:
        return None
    # Stacks made before these existed.
    state["secrets"].setdefault("service_token", new_service_token())
    state["secrets"].setdefault("platform_api_key", secrets.token_urlsafe(24))
    return state


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Write JSON readable by the owner only, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def part_ref(part: dict[str, Any]) -> ProcessRef | None:
    """The recorded process of a part, if one was recorded."""
    pid, created = part.get("pid"), part.get("create_time")
    return ProcessRef(int(pid), float(created)) if pid and created else None


# --- ports ----------------------------------------------------------------------------


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def choose_port(env_name: str, previous: int | None, taken: set[int]) -> int:
    """DISTILLERY_<ENV_NAME>_PORT if set, else the previous port while it is free, else a free one."""
    fixed = os.environ.get(f"DISTILLERY_{env_name.upper()}_PORT") if env_name else None
    if fixed:
        port = int(fixed)
    elif previous and previous not in taken and _bindable(previous):
        port = previous
    else:
        port = free_port()
        while port in taken:
            port = free_port()
    taken.add(port)
    return port


# --- what each service is told --------------------------------------------------------


def service_env(state: State, name: str, addresses: dict[str, str]) -> dict[str, str]:
    """The settings of one service: where everything is, and its secrets."""
    keys, parts = state["secrets"], state["parts"]
    env = {
        "DISTILLERY_GRPC_ADDRESS": addresses[name],
        "DISTILLERY_DATABASE_URL": postgres_url(parts["postgres"]["ports"]["postgres"], keys["postgres_password"]),
        "DISTILLERY_S3_ENDPOINT": parts["s3"]["address"],
        "DISTILLERY_S3_ACCESS_KEY": keys["s3_access_key"],
        "DISTILLERY_S3_SECRET_KEY": keys["s3_secret_key"],
        "DISTILLERY_S3_BUCKET": BUCKET,
        "DISTILLERY_LOG_LEVEL": os.environ.get("DISTILLERY_LOG_LEVEL", "INFO"),
        "DISTILLERY_SERVICE_TOKEN": keys["service_token"],
        **{f"DISTILLERY_{other.upper()}_ADDRESS": address for other, address in addresses.items()},
    }
    if name == "registry":
        env["DISTILLERY_ADMIN_TOKEN"] = keys["admin_token"]
        env[GATEWAY_URL_VARIABLE] = f"http://{addresses[GATEWAY_HTTP]}"
    if name == "teacher":
        env["DISTILLERY_MASTER_KEY"] = keys["master_key"]
        env.update(platform_env(state))
    if name == "trainer":
        ray = parts["ray"]
        env.update(ray_head.client_env(Path(ray["token_file"])))
        env["DISTILLERY_RAY_ADDRESS"] = ray["dashboard"]
        env["DISTILLERY_RAY_GCS_ADDRESS"] = ray["address"]
        env["DISTILLERY_RAY_TOKEN_FILE"] = ray["token_file"]
        # Student models: hub ids, or directories under these (the examples' demo model is in home/models).
        env["DISTILLERY_MODEL_ROOTS"] = os.environ.get("DISTILLERY_MODEL_ROOTS") or str(Path(state["home"]) / "models")
    return env


def gateway_url(root: Path | None = None) -> str | None:
    """The gateway's base URL (``http://127.0.0.1:P``; the OpenAI SDK's base_url is this + "/v1"):
    DISTILLERY_GATEWAY_URL, else the local stack's (``$DISTILLERY_HOME/stack.json``), else None."""
    if url := os.environ.get(GATEWAY_URL_VARIABLE, "").strip():
        return url.rstrip("/")
    from distillery.client import home

    state = load((root or home()) / "stack.json")
    recorded = ((state or {}).get("parts", {}).get("gateway") or {}).get("url")
    return str(recorded) if recorded else None


def platform_env(state: State) -> dict[str, str]:
    """Where the teacher's ``platform`` provider is: the stack's llama.cpp server, or the URL given at ``up``.

    With neither (llama-cpp-python not installed) the teacher has no platform endpoint.
    """
    platform = state["parts"].get("platform", {})
    if platform.get("external"):
        # DISTILLERY_PLATFORM_API_KEY, if any, comes with the environment of `up` itself.
        return {"DISTILLERY_PLATFORM_BASE_URL": platform["external"]}
    if platform.get("base_url"):
        return {"DISTILLERY_PLATFORM_BASE_URL": platform["base_url"],
                "DISTILLERY_PLATFORM_API_KEY": state["secrets"]["platform_api_key"]}  # fmt: skip
    return {}


def fingerprint(state: State, name: str, addresses: dict[str, str]) -> str:
    """Changes when a service's settings change (a dependency moved): then it must restart."""
    settings = json.dumps(service_env(state, name, addresses), sort_keys=True)
    return hashlib.sha256(settings.encode()).hexdigest()[:16]
