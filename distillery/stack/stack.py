"""The local stack: ``up``, ``down`` and ``status`` over one data directory.

Everything lives under ``$DISTILLERY_HOME`` (``distillery.client.home()``):

    stack.json        ports, pids, secrets, tenant id (0600); read by the SDK
    credentials.json  the dev tenant's API key for the CLI (0600)
    stack.lock        held by `up` and `down`, so two of them never race
    data/postgres     PostgreSQL's data directory
    data/s3           SeaweedFS's data
    ray/              Ray's temp dir (in /tmp when this path is too long for Ray's sockets)
    ray_token         the Ray head's auth token (0600), for the trainer and the Jobs API
    logs/<part>.log   each part's output

``up`` starts what is not running, in order: PostgreSQL, S3 and the Ray head
(Ray in the background), the registry, the dev tenant, then ingest, teacher and
trainer. A part keeps its ports from one ``up`` to the next while they are free.
A service whose settings changed (a dependency moved) is restarted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distillery.stack import health, ray_head
from distillery.stack.processes import (
    STACK_ID_VARIABLE,
    STACK_PART_VARIABLE,
    ProcessRef,
    StackLock,
    StopPlan,
    listening,
    processes_with_argument,
    spawn,
    stop,
    tagged_processes,
    tail,
    tree,
    unique,
)
from distillery.stack.servers import S3Ports, free_port, postgres_url, start_postgres, start_s3

PARTS = ("postgres", "s3", "ray", "registry", "ingest", "teacher", "trainer")
SERVICES = ("registry", "ingest", "teacher", "trainer")
BUCKET = "distillery"
LOCK_TIMEOUT_S = 300.0
SERVICE_START_TIMEOUT_S = 90.0
RAY_START_TIMEOUT_S = 120.0
# The first signal to a part's main process, and how long it gets before everyone left gets SIGTERM, then SIGKILL.
# PostgreSQL: SIGINT = fast shutdown. Ray: SIGTERM to `ray start --block` drains and stops its processes (~4 s).
STOP_SIGNALS = {"postgres": (signal.SIGINT, 20.0), "ray": (signal.SIGTERM, 15.0)}

# (part, event, detail): events are "starting", "ready", "running" (kept), "restarting", "bootstrap".
Progress = Callable[[str, str, str], None]


class StackError(Exception):
    """An expected failure, with a message for the person at the terminal."""


@dataclass
class PartStatus:
    name: str
    address: str
    health: str  # SERVING, NOT_SERVING or DOWN
    pid: int | None = None
    detail: str = ""
    log: str = ""


@dataclass
class UpResult:
    already_running: bool
    started: list[str]
    parts: list[PartStatus]
    tenant: str  # what happened to the dev tenant: "created", "kept", "new key"


@dataclass
class DownResult:
    stopped: list[str]
    survivors: list[str] = field(default_factory=list)
    listening: dict[int, str] = field(default_factory=dict)


def _ignore(part: str, event: str, detail: str) -> None:
    pass


class LocalStack:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.state_path = home / "stack.json"
        self.credentials_path = home / "credentials.json"
        self.logs = home / "logs"
        self.lock = StackLock(home / "stack.lock")
        self.postgres_data = home / "data" / "postgres"
        self.s3_data = home / "data" / "s3"
        self.ray_token = home / "ray_token"
        # How to recognise a server of this stack that outlived its recorded pid (an `up` killed mid-start).
        self.servers_by_argument = {"postgres": str(self.postgres_data), "s3": f"-dir={self.s3_data}"}

    # --- state ----------------------------------------------------------------

    def load(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return state if isinstance(state, dict) and "secrets" in state else None

    def save(self, state: dict[str, Any]) -> None:
        write_private(self.state_path, state)

    def _new_state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "home": str(self.home),
            "stack_id": secrets.token_hex(8),
            "secrets": {
                "postgres_password": secrets.token_urlsafe(24),
                "s3_access_key": "DST" + secrets.token_hex(8).upper(),
                "s3_secret_key": secrets.token_urlsafe(30),
                "admin_token": "dat_" + secrets.token_urlsafe(30),
                "master_key": base64.b64encode(os.urandom(32)).decode(),
            },
            "tenant_id": None,
            "parts": {},
        }

    # --- status ---------------------------------------------------------------

    def status(self) -> list[PartStatus] | None:
        """Each part's health, or None when no stack was ever started in this home."""
        state = self.load()
        if state is None:
            return None
        with ThreadPoolExecutor(len(PARTS)) as pool:
            return list(pool.map(lambda name: self._part_status(state, name), PARTS))

    def _part_status(self, state: dict[str, Any], name: str) -> PartStatus:
        part = state["parts"].get(name, {})
        result = PartStatus(name, part.get("address", ""), "DOWN", log=str(self.logs / f"{name}.log"))
        ref = _ref(part)
        if ref is None or not ref.alive():
            result.detail = "not running"
            return result
        result.pid = ref.pid
        ok, why = self._check(state, name)
        result.health = "SERVING" if ok else "NOT_SERVING"
        result.detail = why
        return result

    def _check(self, state: dict[str, Any], name: str) -> tuple[bool, str]:
        keys = state["secrets"]
        part = state["parts"][name]
        if name == "postgres":
            return health.postgres(postgres_url(part["ports"]["postgres"], keys["postgres_password"]))
        if name == "s3":
            return health.s3(part["address"], keys["s3_access_key"], keys["s3_secret_key"])
        if name == "ray":
            token = Path(part["token_file"]).read_text().strip()
            return ray_head.health(ray_head.RayPorts.from_dict(part["ports"]), token)
        return health.grpc_service(part["address"])

    # --- up -------------------------------------------------------------------

    def up(self, progress: Progress = _ignore) -> UpResult:
        self.home.mkdir(parents=True, exist_ok=True)
        self.lock.acquire(LOCK_TIMEOUT_S, lambda: progress("stack", "waiting", "another `distillery up` runs"))
        try:
            state = self.load() or self._new_state()
            self.save(state)
            before = {s.name: s for s in map(lambda n: self._part_status(state, n), PARTS)}
            if all(s.health == "SERVING" for s in before.values()) and self._services_current(state):
                return UpResult(True, [], list(before.values()), self._ensure_dev_tenant(state))
            started = self._start_missing(state, before, progress)
            tenant = self._ensure_dev_tenant(state)
            self.save(state)
            return UpResult(False, started, [self._part_status(state, n) for n in PARTS], tenant)
        finally:
            self.lock.release()

    def _start_missing(self, state: dict[str, Any], before: dict[str, PartStatus], progress: Progress) -> list[str]:
        started: list[str] = []

        def needs_start(name: str) -> bool:
            status = before[name]
            if status.health == "SERVING":
                progress(name, "running", status.address)
                return False
            if status.pid is not None:  # alive but not answering: replace it
                progress(name, "restarting", status.detail)
            self._stop_parts(state, [name])  # and whatever it left behind when it died
            started.append(name)
            return True

        taken: set[int] = set()  # ports of the parts that keep running, then of those started
        for name, status in before.items():
            if status.health == "SERVING":
                taken.update(state["parts"][name].get("ports", {}).values())
        if needs_start("ray"):
            self._spawn_ray(state, taken, progress)
        if needs_start("postgres"):
            self._start_postgres(state, taken, progress)
        if needs_start("s3"):
            self._start_s3(state, taken, progress)
        # Services get every address in their environment: one whose settings differ is restarted.
        addresses = {name: self._service_address(state, name, taken) for name in SERVICES}
        for name in SERVICES:
            current = before[name].health == "SERVING"
            if current and state["parts"][name].get("config") != self._fingerprint(state, name, addresses):
                progress(name, "restarting", "its settings changed")
                self._stop_parts(state, [name])
                before[name] = PartStatus(name, "", "DOWN")
        if needs_start("registry"):
            self._spawn_service(state, "registry", addresses, progress)
            self._wait_service(state, "registry", progress)
        waiting = [name for name in ("ingest", "teacher") if needs_start(name)]
        for name in waiting:
            self._spawn_service(state, name, addresses, progress)
        if "ray" in started:  # the trainer needs Ray's Jobs API
            self._wait_ray(state, progress)
        if needs_start("trainer"):
            self._spawn_service(state, "trainer", addresses, progress)
            waiting.append("trainer")
        for name in waiting:
            self._wait_service(state, name, progress)
        return [name for name in PARTS if name in started]

    def _record(self, state: dict[str, Any], name: str, pid: int, **fields: Any) -> None:
        ref = ProcessRef.of(pid)
        part = {"pid": ref.pid, "create_time": ref.create_time, "log": str(self.logs / f"{name}.log"), **fields}
        state["parts"][name] = part
        self.save(state)

    def _start_postgres(self, state: dict[str, Any], taken: set[int], progress: Progress) -> None:
        port = _choose_port("postgres", state["parts"].get("postgres", {}).get("ports", {}).get("postgres"), taken)
        progress("postgres", "starting", f"127.0.0.1:{port}")
        log = self.logs / "postgres.log"
        try:
            proc = start_postgres(self.postgres_data, port, state["secrets"]["postgres_password"], log)
        except (RuntimeError, TimeoutError) as err:
            raise StackError(f"PostgreSQL did not start: {err}\n{_log_excerpt(log)}") from None
        self._record(state, "postgres", proc.pid, address=f"127.0.0.1:{port}", ports={"postgres": port})
        progress("postgres", "ready", f"127.0.0.1:{port}")

    def _start_s3(self, state: dict[str, Any], taken: set[int], progress: Progress) -> None:
        previous = state["parts"].get("s3", {}).get("ports", {})
        ports = {name: _choose_port("s3" if name == "s3" else "", previous.get(name), taken)
                 for name in S3Ports.__dataclass_fields__}  # fmt: skip
        progress("s3", "starting", f"127.0.0.1:{ports['s3']}")
        keys = state["secrets"]
        log = self.logs / "s3.log"
        try:
            proc = start_s3(self.s3_data, S3Ports(**ports), keys["s3_access_key"], keys["s3_secret_key"], log)
        except (RuntimeError, TimeoutError) as err:
            raise StackError(f"the S3 server did not start: {err}\n{_log_excerpt(log)}") from None
        address = f"127.0.0.1:{ports['s3']}"
        self._record(state, "s3", proc.pid, address=address, ports=ports, bucket=BUCKET)
        health.ensure_bucket(address, keys["s3_access_key"], keys["s3_secret_key"], BUCKET)
        progress("s3", "ready", address)

    def _spawn_ray(self, state: dict[str, Any], taken: set[int], progress: Progress) -> None:
        previous = state["parts"].get("ray", {}).get("ports", {})
        fixed = {name: _choose_port(env, previous.get(name), taken)
                 for name, env in (("gcs", "ray"), ("dashboard", "ray_dashboard"))}  # fmt: skip
        ports = ray_head.RayPorts.pick(fixed, avoid=taken)
        taken.update(ports.all())
        temp_dir = ray_head.temp_dir_for(self.home)
        token_file = self.ray_token
        ray_head.ensure_token(token_file)
        env = {**_base_env(state, "ray"), **ray_head.head_env(ports, token_file)}
        env.pop("RAY_ADDRESS", None)
        progress("ray", "starting", f"127.0.0.1:{ports.gcs}")
        object_store = int(os.environ.get("DISTILLERY_RAY_OBJECT_STORE_BYTES", ray_head.DEFAULT_OBJECT_STORE_BYTES))
        command = ray_head.head_command(ports, temp_dir, object_store)
        proc = spawn(command, self.logs / "ray.log", env, cwd=self.home)
        self._record(state, "ray", proc.pid, address=f"127.0.0.1:{ports.gcs}", dashboard=ray_head.dashboard_url(ports),
                     ports=ports.to_dict(), token_file=str(token_file), temp_dir=str(temp_dir))  # fmt: skip

    def _wait_ray(self, state: dict[str, Any], progress: Progress) -> None:
        part = state["parts"]["ray"]
        self._wait_healthy(state, "ray", RAY_START_TIMEOUT_S)
        progress("ray", "ready", f"{part['address']} (dashboard {part['dashboard']})")

    def _service_address(self, state: dict[str, Any], name: str, taken: set[int]) -> str:
        part = state["parts"].get(name, {})
        ref = _ref(part)
        if ref is not None and ref.alive() and part.get("address"):
            taken.add(int(part["address"].rsplit(":", 1)[1]))
            return str(part["address"])  # running: keep its port
        return f"127.0.0.1:{_choose_port(name, part.get('ports', {}).get('grpc'), taken)}"

    def _service_env(self, state: dict[str, Any], name: str, addresses: dict[str, str]) -> dict[str, str]:
        keys, parts = state["secrets"], state["parts"]
        env = {
            "DISTILLERY_GRPC_ADDRESS": addresses[name],
            "DISTILLERY_DATABASE_URL": postgres_url(parts["postgres"]["ports"]["postgres"], keys["postgres_password"]),
            "DISTILLERY_S3_ENDPOINT": parts["s3"]["address"],
            "DISTILLERY_S3_ACCESS_KEY": keys["s3_access_key"],
            "DISTILLERY_S3_SECRET_KEY": keys["s3_secret_key"],
            "DISTILLERY_S3_BUCKET": BUCKET,
            "DISTILLERY_LOG_LEVEL": os.environ.get("DISTILLERY_LOG_LEVEL", "INFO"),
            **{f"DISTILLERY_{other.upper()}_ADDRESS": address for other, address in addresses.items()},
        }
        if name == "registry":
            env["DISTILLERY_ADMIN_TOKEN"] = keys["admin_token"]
        if name == "teacher":
            env["DISTILLERY_MASTER_KEY"] = keys["master_key"]
        if name == "trainer":
            ray = parts["ray"]
            env.update(ray_head.client_env(Path(ray["token_file"])))
            env["DISTILLERY_RAY_ADDRESS"] = ray["dashboard"]
            env["DISTILLERY_RAY_GCS_ADDRESS"] = ray["address"]
            env["DISTILLERY_RAY_TOKEN_FILE"] = ray["token_file"]
        return env

    def _fingerprint(self, state: dict[str, Any], name: str, addresses: dict[str, str]) -> str:
        settings = json.dumps(self._service_env(state, name, addresses), sort_keys=True)
        return hashlib.sha256(settings.encode()).hexdigest()[:16]

    def _services_current(self, state: dict[str, Any]) -> bool:
        addresses = {name: state["parts"][name]["address"] for name in SERVICES}
        return all(state["parts"][n].get("config") == self._fingerprint(state, n, addresses) for n in SERVICES)

    def _spawn_service(self, state: dict[str, Any], name: str, addresses: dict[str, str], progress: Progress) -> None:
        env = {**_base_env(state, name), **self._service_env(state, name, addresses)}
        progress(name, "starting", addresses[name])
        proc = spawn([sys.executable, "-m", f"services.{name}"], self.logs / f"{name}.log", env, cwd=_repo_root())
        port = int(addresses[name].rsplit(":", 1)[1])
        self._record(state, name, proc.pid, address=addresses[name], ports={"grpc": port},
                     config=self._fingerprint(state, name, addresses))  # fmt: skip

    def _wait_service(self, state: dict[str, Any], name: str, progress: Progress) -> None:
        self._wait_healthy(state, name, SERVICE_START_TIMEOUT_S)
        progress(name, "ready", state["parts"][name]["address"])

    def _wait_healthy(self, state: dict[str, Any], name: str, timeout_s: float) -> None:
        ref = _ref(state["parts"][name])
        assert ref is not None
        log = self.logs / f"{name}.log"
        deadline = time.monotonic() + timeout_s
        why = ""
        while time.monotonic() < deadline:
            if not ref.alive():
                raise StackError(f"{name} exited before it was ready; see {log}\n{_log_excerpt(log)}")
            ok, why = self._check(state, name)
            if ok:
                return
            time.sleep(0.25)
        raise StackError(f"{name} was not ready after {timeout_s:.0f}s ({why}); see {log}\n{_log_excerpt(log)}")

    # --- the dev tenant ---------------------------------------------------------

    def _ensure_dev_tenant(self, state: dict[str, Any]) -> str:
        from distillery.stack import dev_tenant

        try:
            outcome, tenant_id = dev_tenant.ensure(
                state["parts"]["registry"]["address"], state["secrets"]["admin_token"], state.get("tenant_id"),
                self.credentials_path,
            )  # fmt: skip
        except dev_tenant.BootstrapError as err:
            raise StackError(f"could not set up the dev tenant: {err}") from None
        if state.get("tenant_id") != tenant_id:
            state["tenant_id"] = tenant_id
            self.save(state)
        return outcome

    # --- down -----------------------------------------------------------------

    def down(self) -> DownResult | None:
        """Stop every part; None when nothing was running."""
        if self.load() is None:
            return None
        self.lock.acquire(LOCK_TIMEOUT_S)
        try:
            state = self.load()
            assert state is not None
            running = [name for name in PARTS if (ref := _ref(state["parts"].get(name, {}))) and ref.alive()]
            if not running and not tagged_processes(state["stack_id"]):
                return None
            result = DownResult(stopped=running)
            # Services first (they flush to PostgreSQL on the way out), PostgreSQL last.
            for group in (list(SERVICES), ["ray", "s3"], ["postgres"]):
                result.survivors += self._stop_parts(state, group)
            leftovers = [proc for procs in tagged_processes(state["stack_id"]).values() for proc in procs]
            result.survivors += [f"pid {p.pid} ({_name(p)})" for p in stop([StopPlan("leftovers", None, leftovers)])]
            ports = [port for part in state["parts"].values() for port in part.get("ports", {}).values()]
            result.listening = listening(ports)
            return result
        finally:
            self.lock.release()

    def _stop_parts(self, state: dict[str, Any], names: list[str]) -> list[str]:
        """Stop these parts: each one's process tree and every process tagged with its name."""
        tagged = tagged_processes(state["stack_id"])  # found before any signal is sent
        plans = []
        for name in names:
            ref = _ref(state["parts"].get(name, {}))
            root = ref.process() if ref else None
            processes = [*(tree(root) if root else []), *tagged.get(name, [])]
            if name in self.servers_by_argument:  # PostgreSQL and S3 are not tagged; their data dir is theirs
                processes += processes_with_argument(self.servers_by_argument[name])
            processes = unique(processes)
            if processes:
                first, grace = STOP_SIGNALS.get(name, (signal.SIGTERM, 10.0))
                plans.append(StopPlan(name, root, processes, first, grace))
        survivors = stop(plans)
        for name in names:
            if name in state["parts"]:
                state["parts"][name]["pid"] = None
        self.save(state)
        return [f"pid {p.pid} ({_name(p)})" for p in survivors]


# --- helpers --------------------------------------------------------------------------


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Write JSON readable by the owner only, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _ref(part: dict[str, Any]) -> ProcessRef | None:
    pid, created = part.get("pid"), part.get("create_time")
    return ProcessRef(int(pid), float(created)) if pid and created else None


def _name(proc: Any) -> str:
    try:
        return str(proc.name())
    except Exception:
        return "?"


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _choose_port(env_name: str, previous: int | None, taken: set[int]) -> int:
    """DISTILLERY_<PART>_PORT if set, else the previous port while it is free, else a free one."""
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


def _base_env(state: dict[str, Any], part: str) -> dict[str, str]:
    """The environment of a process the stack starts itself, tagged so that ``down`` finds its children."""
    return {**os.environ, STACK_ID_VARIABLE: state["stack_id"], STACK_PART_VARIABLE: part, "PYTHONUNBUFFERED": "1"}


def _repo_root() -> Path:
    import services

    return Path(services.__file__).resolve().parent.parent


def _log_excerpt(log: Path) -> str:
    text = tail(log)
    return f"--- last lines of {log} ---\n{text}" if text else ""


def part_dicts(parts: list[PartStatus]) -> list[dict[str, Any]]:
    return [asdict(part) for part in parts]
