"""A Ray head for the local stack: ``ray start --head --block``, supervised.

What this module takes care of, measured on Ray 2.60:

- Token auth stays on. Ray turns it on for ``ray start`` only when
  ``RAY_AUTH_MODE=token`` is set (or a token exists in ~/.ray), and reads the
  token from ``RAY_AUTH_TOKEN_PATH``. Each stack keeps its own token in
  ``$DISTILLERY_HOME/ray_token`` (0600) and hands the same two variables to
  the trainer: Ray's ``JobSubmissionClient`` then sends the token by itself.
- 127.0.0.1 only. Ray replaces a loopback ``--node-ip-address`` with the
  machine's address and binds GCS and raylet on every address, unless
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (single-node mode), which makes every
  Ray server bind and advertise 127.0.0.1.
- Every port chosen, so stacks run side by side: the ``ray start`` flags, plus
  the autoscaler's and the dashboard's metrics ports (fixed 44217/44227 by
  default, set with environment variables).
- Unix sockets live under ``--temp-dir`` and have a ~107-character path limit,
  so the temp dir must be short (see ``temp_dir_for``). Ray makes that dir 0777 and its logs
  0644, so it sits in a 0700 folder (``make_parent_private``).
- Stopping: SIGTERM to ``ray start --block`` drains the node (at most 2 s
  here, see ``head_env``) and stops its processes in ~4 s; SIGTERM to the whole process group instead leaves
  ``gcs_server`` and ``raylet`` running. Workers started for jobs may sit in
  process groups of their own: ``down`` finds them by the stack id in their
  environment.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from distillery.stack.servers import free_port, port_open

DEFAULT_OBJECT_STORE_BYTES = 500 * 1024 * 1024
# Ray's session directory adds ~45 characters and its sockets ~25 more.
MAX_TEMP_DIR_CHARS = 40


@dataclass(frozen=True)
class RayPorts:
    gcs: int
    dashboard: int
    client_server: int
    node_manager: int
    object_manager: int
    dashboard_agent_http: int
    dashboard_agent_grpc: int
    runtime_env_agent: int
    metrics_export: int
    autoscaler_metrics: int
    dashboard_metrics: int

    @classmethod
    def pick(cls, fixed: dict[str, int] | None = None, avoid: set[int] | frozenset[int] = frozenset()) -> RayPorts:
        """Free ports for every field, except those given in ``fixed``; none of ``avoid``."""
        chosen = dict(fixed or {})
        for name in cls.__dataclass_fields__:
            while name not in chosen:
                port = free_port()
                if port not in chosen.values() and port not in avoid:
                    chosen[name] = port
        return cls(**chosen)

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> RayPorts:
        return cls(**data)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def all(self) -> list[int]:
        return list(asdict(self).values())


def temp_dir_for(home: Path) -> Path:
    """``$DISTILLERY_HOME/ray/r`` when short enough for Ray's unix sockets, else one in /tmp.

    Either way the folder above it is the stack user's only (see ``head_command``).
    """
    inside = home / "ray" / "r"
    if len(str(inside)) <= MAX_TEMP_DIR_CHARS:
        return inside
    return Path("/tmp") / f"dst-ray-{hashlib.sha256(str(home).encode()).hexdigest()[:10]}" / "r"


def make_parent_private(temp_dir: Path) -> None:
    """Make ``temp_dir``'s parent folder, mode 0700 (also when it exists).

    Ray makes its temp dir and every folder in it mode 0777 and writes its logs 0644, and those
    logs hold what jobs were given (``runtime_env_agent.log`` prints a job's environment): behind
    a 0700 parent no other user of the machine reaches any of it.
    """
    parent = temp_dir.parent
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    parent.chmod(0o700)
    # Sessions an earlier version kept beside ``temp_dir`` logged the jobs' S3 keys in plain text: gone.
    for old in parent.glob("session_*"):
        if old.is_symlink() or not old.is_dir():
            old.unlink(missing_ok=True)
        else:
            shutil.rmtree(old, ignore_errors=True)


def ensure_token(path: Path) -> str:
    """The stack's Ray token, made on first use (256 bits, as Ray makes its own)."""
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    path.write_text(token)
    path.chmod(0o600)
    return token


def client_env(token_path: Path) -> dict[str, str]:
    """Environment for a process that talks to this Ray head (the trainer, the head itself)."""
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


def head_command(ports: RayPorts, temp_dir: Path, object_store_bytes: int) -> list[str]:
    """``ray start --head --block`` on ``ports``; makes ``temp_dir``'s parent private first."""
    make_parent_private(temp_dir)
    ray = str(Path(sys.executable).parent / "ray")
    return [
        ray, "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
        f"--port={ports.gcs}", f"--dashboard-port={ports.dashboard}",
        f"--ray-client-server-port={ports.client_server}", f"--node-manager-port={ports.node_manager}",
        f"--object-manager-port={ports.object_manager}",
        f"--dashboard-agent-listen-port={ports.dashboard_agent_http}",
        f"--dashboard-agent-grpc-port={ports.dashboard_agent_grpc}",
        f"--runtime-env-agent-port={ports.runtime_env_agent}", f"--metrics-export-port={ports.metrics_export}",
        f"--object-store-memory={object_store_bytes}", f"--temp-dir={temp_dir}",
    ]  # fmt: skip


def head_env(ports: RayPorts, token_path: Path) -> dict[str, str]:
    return {
        **client_env(token_path),
        "AUTOSCALER_METRIC_PORT": str(ports.autoscaler_metrics),
        "DASHBOARD_METRIC_PORT": str(ports.dashboard_metrics),
        "RAY_USAGE_STATS_ENABLED": "0",
        # On SIGTERM the head "drains" first, for up to 30 s while any worker is busy: that
        # serves Ray Serve's rolling upgrades, which the local stack has none of.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "2",
    }


def dashboard_url(ports: RayPorts) -> str:
    return f"http://127.0.0.1:{ports.dashboard}"


def health(ports: RayPorts, token: str, timeout_s: float = 2.0) -> tuple[bool, str]:
    """(healthy, why not): GCS port open, GCS healthy per the dashboard, Jobs API answers with the token."""
    if not port_open(ports.gcs):
        return False, f"GCS port {ports.gcs} closed"
    base = dashboard_url(ports)
    try:
        with urllib.request.urlopen(f"{base}/api/gcs_healthz", timeout=timeout_s) as response:
            if response.status != 200:
                return False, f"GCS health check answered {response.status}"
        request = urllib.request.Request(f"{base}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            json.load(response)
    except urllib.error.HTTPError as err:
        return False, f"dashboard answered {err.code} {err.reason}"
    except (OSError, ValueError) as err:
        return False, f"dashboard not reachable ({err})"
    return True, ""
