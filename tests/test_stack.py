"""The local stack end to end: `distillery up`, `status`, `down` as real subprocesses.

One test walks the whole life of a stack (starting all nine parts takes ~15 s
here, so the checks share starts): up; everything SERVING on 127.0.0.1 with
reflection; the platform teacher (llama.cpp) answers and the teacher is told
where it is; a killed platform teacher restarted alone; a second stack side by
side, pointed at the first one's platform teacher; a killed service reported;
down leaves no port and no process; a second up finds the earlier data; up after
every part was SIGKILLed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from minio import Minio

from distillery.registry.v1 import registry_pb2, registry_pb2_grpc
from distillery.stack import health
from distillery.stack.processes import tagged_processes
from distillery.stack.servers import port_open

PARTS = ["postgres", "s3", "ray", "registry", "ingest", "teacher", "platform", "trainer", "gateway"]
SERVICE_NAMES = {
    "registry": "distillery.registry.v1.RegistryService",
    "ingest": "distillery.ingest.v1.IngestService",
    "teacher": "distillery.teacher.v1.TeacherService",
    "trainer": "distillery.trainer.v1.TrainerService",
}
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1")


def distillery(
    home: Path, *args: str, timeout: float = 240, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISTILLERY_HOME": str(home)}
    for name in ("DISTILLERY_API_KEY", "DISTILLERY_PLATFORM_BASE_URL", "DISTILLERY_PLATFORM_API_KEY",
                 *(f"DISTILLERY_{s.upper()}_ADDRESS" for s in SERVICE_NAMES)):  # fmt: skip
        env.pop(name, None)
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "distillery.cli.main", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def up(home: Path, extra_env: dict[str, str] | None = None) -> None:
    result = distillery(home, "up", extra_env=extra_env)
    assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}\n{logs(home)}"


def down(home: Path) -> subprocess.CompletedProcess[str]:
    return distillery(home, "down", timeout=120)


def logs(home: Path) -> str:
    out = []
    for log in sorted((home / "logs").glob("*.log")):
        out.append(f"--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))
    return "\n".join(out)


def status(home: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    result = distillery(home, "status", "--json", timeout=60)
    document = json.loads(result.stdout)
    return result.returncode, {part["name"]: part for part in document["parts"]}


def state(home: Path) -> dict[str, Any]:
    return dict(json.loads((home / "stack.json").read_text()))


def stack_ports(home: Path) -> set[int]:
    return {port for part in state(home)["parts"].values() for port in part["ports"].values()}


def stack_processes(home: Path) -> list[psutil.Process]:
    """Every live process of the stack: the recorded parts' trees and everything tagged with its id."""
    found: dict[int, psutil.Process] = {}
    recorded = state(home)
    for part in recorded["parts"].values():
        try:
            root = psutil.Process(part["pid"]) if part.get("pid") else None
            if root is not None and abs(root.create_time() - part["create_time"]) < 0.01:
                for proc in [root, *root.children(recursive=True)]:
                    found[proc.pid] = proc
        except psutil.Error:
            continue
    for procs in tagged_processes(recorded["stack_id"]).values():
        found.update({proc.pid: proc for proc in procs})
    return list(found.values())


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    result = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                result.append(proc)
        except psutil.Error:
            continue
    return result


def assert_all_serving(home: Path, off: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    code, parts = status(home)
    assert sorted(parts) == sorted(PARTS)
    assert code == 0, parts
    for name, part in parts.items():
        if name in off:  # not run on purpose
            assert part["health"] == "OFF" and part["pid"] is None, (name, part)
            continue
        assert part["health"] == "SERVING", (name, part, logs(home))
        host, port = part["address"].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0, part
    return parts


def assert_loopback_only(home: Path) -> None:
    """No process of the stack listens on anything but 127.0.0.1."""
    pids = {proc.pid for proc in stack_processes(home)}
    listeners = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert len(listeners) >= 7, listeners
    for conn in listeners:
        assert conn.laddr.ip in LOOPBACK, f"pid {conn.pid} listens on {conn.laddr}"


def assert_stopped(home: Path, processes: list[psutil.Process]) -> None:
    result = down(home)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    listening = sorted(port for port in stack_ports(home) if port_open(port))
    assert listening == [], f"ports still listening after down: {listening}"
    survivors = alive(processes) + alive(stack_processes(home))
    assert survivors == [], f"processes left after down: {[(p.pid, p.name()) for p in survivors]}"


def environment(pid: int) -> dict[str, str]:
    return dict(psutil.Process(pid).environ())


def chat(base_url: str, api_key: str, content: str) -> dict[str, Any]:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    request = urllib.request.Request(f"{base_url}/chat/completions", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return dict(json.load(response))


def listed_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = stub.ServerReflectionInfo(iter([request]), timeout=5)
        return {service.name for response in responses for service in response.list_services_response.service}


def registry(home: Path) -> tuple[registry_pb2_grpc.RegistryServiceStub, tuple[tuple[str, str]], grpc.Channel]:
    key = json.loads((home / "credentials.json").read_text())["api_key"]
    channel = grpc.insecure_channel(state(home)["parts"]["registry"]["address"])
    return registry_pb2_grpc.RegistryServiceStub(channel), (("authorization", f"Bearer {key}"),), channel


def s3_client(home: Path) -> Minio:
    recorded = state(home)
    keys = recorded["secrets"]
    return Minio(recorded["parts"]["s3"]["address"], keys["s3_access_key"], keys["s3_secret_key"], secure=False)


def short_home() -> Path:
    # Ray's unix sockets live under the home: keep the path short.
    return Path(tempfile.mkdtemp(prefix="dst-", dir="/tmp"))


@pytest.mark.timeout(900)
def test_local_stack_lifecycle() -> None:
    home, other = short_home(), short_home()
    try:
        # Never started: a clear message and exit 3.
        never = distillery(home, "status")
        assert never.returncode == 3 and "distillery up" in never.stderr

        up(home)
        parts = assert_all_serving(home)
        assert_loopback_only(home)
        assert (home / "stack.json").stat().st_mode & 0o777 == 0o600
        assert (home / "credentials.json").stat().st_mode & 0o777 == 0o600
        for name in ("postgres", "s3", "ray", *SERVICE_NAMES):
            assert (home / "logs" / f"{name}.log").exists()
        for name, service in SERVICE_NAMES.items():
            names = listed_services(parts[name]["address"])
            assert service in names and "grpc.health.v1.Health" in names, (name, names)

        # A second `up` while running: nothing restarted.
        pids = {name: part["pid"] for name, part in parts.items()}
        again = distillery(home, "up")
        assert again.returncode == 0 and "already running" in again.stdout
        assert {name: part["pid"] for name, part in status(home)[1].items()} == pids

        # The platform teacher: llama.cpp's server answers with the stack's key, and the teacher knows where it is.
        platform = state(home)["parts"]["platform"]
        platform_key = state(home)["secrets"]["platform_api_key"]
        assert platform["base_url"] == f"http://{parts['platform']['address']}/v1"
        answer = chat(platform["base_url"], platform_key, "Say hello.")
        assert answer["choices"][0]["message"]["content"] and answer["usage"]["completion_tokens"] > 0
        teacher_env = environment(parts["teacher"]["pid"])
        assert teacher_env["DISTILLERY_PLATFORM_BASE_URL"] == platform["base_url"]
        assert teacher_env["DISTILLERY_PLATFORM_API_KEY"] == platform_key
        assert teacher_env["DISTILLERY_INGEST_ADDRESS"] == parts["ingest"]["address"]
        assert platform_key not in " ".join(psutil.Process(parts["platform"]["pid"]).cmdline())

        # It loaded the CPU backend this machine runs, and said which.
        assert re.search(r"llama\.cpp CPU backend: \S+", (home / "logs" / "platform.log").read_text())

        # A killed platform teacher, then one that crashes as a build for another CPU does (SIGILL):
        # status says DOWN at its next check; `up` starts it again alone, on its port.
        for crash in (signal.SIGKILL, signal.SIGILL):
            os.kill(parts["platform"]["pid"], crash)
            psutil.wait_procs([psutil.Process(parts["platform"]["pid"])], timeout=10)
            code, after_kill = status(home)
            assert code == 3 and after_kill["platform"]["health"] == "DOWN", after_kill["platform"]
            up(home)
            parts = assert_all_serving(home)
            assert parts["platform"]["address"] == platform["address"]
            assert {name: part["pid"] for name, part in parts.items() if name != "platform"} == {
                name: pid for name, pid in pids.items() if name != "platform"
            }

        # Data written now must survive down/up: a registry row (an API key) and an S3 object.
        stub, auth, channel = registry(home)
        with channel:
            tenant_id = stub.WhoAmI(registry_pb2.WhoAmIRequest(), metadata=auth, timeout=10).id
            stub.CreateApiKey(registry_pb2.CreateApiKeyRequest(tenant_id=tenant_id, name="survivor"),
                              metadata=auth, timeout=10)  # fmt: skip
        s3_client(home).put_object("distillery", f"{tenant_id}/survivor.txt", _bytes(b"kept"), 4)

        # A second stack with another home runs beside the first, its teacher pointed at the first one's
        # platform teacher (as a deployment points it at its own vLLM): it starts no llama.cpp of its own.
        up(other, {"DISTILLERY_PLATFORM_BASE_URL": platform["base_url"]})
        other_parts = assert_all_serving(other, off=("platform",))
        assert platform["base_url"] in other_parts["platform"]["detail"]
        other_teacher_env = environment(other_parts["teacher"]["pid"])
        assert other_teacher_env["DISTILLERY_PLATFORM_BASE_URL"] == platform["base_url"]
        assert "DISTILLERY_PLATFORM_API_KEY" not in other_teacher_env
        assert not [p for p in stack_processes(other) if "distillery.stack.llama_server" in p.cmdline()]
        assert not stack_ports(home) & stack_ports(other)
        assert_all_serving(home)
        assert_stopped(other, stack_processes(other))

        # A killed service: status exits 3 and names it; the others still answer.
        os.kill(parts["teacher"]["pid"], signal.SIGKILL)
        psutil.wait_procs([psutil.Process(parts["teacher"]["pid"])], timeout=10)
        code, after_kill = status(home)
        assert code == 3
        assert after_kill["teacher"]["health"] != "SERVING"
        text = distillery(home, "status")
        assert text.returncode == 3 and "teacher" in text.stdout
        for name in ("registry", "ingest", "trainer"):
            assert health.grpc_service(parts[name]["address"]) == (True, ""), name

        # down: no port of the stack listens, no process is left; a second down is fine.
        assert_stopped(home, stack_processes(home))
        second = down(home)
        assert second.returncode == 0 and "Nothing is running" in second.stdout
        code, stopped = status(home)
        assert code == 3 and {part["health"] for part in stopped.values()} == {"DOWN"}

        # up again: the same tenant, key and data.
        up(home)
        assert_all_serving(home)
        stub, auth, channel = registry(home)
        with channel:
            assert stub.WhoAmI(registry_pb2.WhoAmIRequest(), metadata=auth, timeout=10).id == tenant_id
            keys = stub.ListApiKeys(registry_pb2.ListApiKeysRequest(), metadata=auth, timeout=10).keys
            assert "survivor" in {key.name for key in keys}
        assert s3_client(home).get_object("distillery", f"{tenant_id}/survivor.txt").read() == b"kept"

        # A crash: every part SIGKILLed (stale pids, a stale postmaster.pid, Ray's orphans). `up` recovers.
        before_crash = stack_processes(home)
        roots = [psutil.Process(part["pid"]) for part in state(home)["parts"].values()]
        for root in roots:
            root.send_signal(signal.SIGKILL)
        psutil.wait_procs(roots, timeout=10)
        up(home)
        assert_all_serving(home)
        assert alive(before_crash) == [], "processes of the crashed stack were left running"
        stub, auth, channel = registry(home)
        with channel:
            assert stub.WhoAmI(registry_pb2.WhoAmIRequest(), metadata=auth, timeout=10).id == tenant_id
        assert_stopped(home, stack_processes(home))
    finally:
        for each in (home, other):
            if (each / "stack.json").exists():
                down(each)
            shutil.rmtree(each, ignore_errors=True)


def _bytes(data: bytes) -> Any:
    import io

    return io.BytesIO(data)
