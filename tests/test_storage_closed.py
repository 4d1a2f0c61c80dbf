"""The object store answers signed S3 requests only, and its data and Ray's logs are the stack user's only.

Issue 16, point 1. ``weed mini`` (started by ``servers.start_s3``, as ``distillery up`` starts it) has a
master, volume server, filer and admin server beside the S3 gateway, each with an HTTP and a gRPC port on
127.0.0.1. Every one of those is tried here as anyone on the machine would: plain HTTP (list, read,
write, delete, the master's UI and ``/dir/assign``), HTTPS without a client certificate, a volume read
of a real file id, gRPC without and with TLS but no client certificate. None may answer with data or
take a write. The S3 port must refuse unsigned and wrongly signed requests and serve signed ones and
presigned URLs. The data directory and the Ray head's session logs must be closed to other users.
"""

from __future__ import annotations

import datetime
import http.client
import io
import os
import ssl
import stat
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
from conftest import RayCluster
from minio import Minio
from minio.error import S3Error

from distillery.stack import ray_head, servers
from services.common.settings import S3Settings

SECRET_ROW = b'{"messages": [{"role": "user", "content": "a row only its tenant may read"}]}\n'
KEY = "tenants/tenant-a/datasets/d1/canonical.jsonl"
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Weed:
    """The fixture's running ``weed mini``: its ports and data directory, read from its command line."""

    ports: dict[str, int]
    data_dir: Path


def _weed_for(s3: S3Settings) -> Weed:
    port = int(s3.endpoint.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            args = psutil.Process(conn.pid).cmdline()
            flags = dict(arg[1:].split("=", 1) for arg in args if arg.startswith("-") and "=" in arg)
            names = {"s3": "s3.port", "s3_grpc": "s3.port.grpc", "master": "master.port",
                     "master_grpc": "master.port.grpc", "volume": "volume.port", "volume_grpc": "volume.port.grpc",
                     "filer": "filer.port", "filer_grpc": "filer.port.grpc", "admin": "admin.port",
                     "admin_grpc": "admin.port.grpc"}  # fmt: skip
            assert set(names) == set(servers.S3Ports.__dataclass_fields__), "a port of weed is not probed"
            return Weed({name: int(flags[flag]) for name, flag in names.items()}, Path(flags["dir"]))
    raise AssertionError(f"no process listens on the S3 port {port}")


def _client(s3: S3Settings, secret: str | None = None) -> Minio:
    return Minio(s3.endpoint, access_key=s3.access_key, secret_key=secret or s3.secret_key, secure=False)


@pytest.fixture(scope="module")
def stored(s3_settings: S3Settings) -> Weed:
    """The fixture's store, holding one tenant's row (bucket ``closed-probe``)."""
    client = _client(s3_settings)
    if not client.bucket_exists("closed-probe"):
        client.make_bucket("closed-probe")
    client.put_object("closed-probe", KEY, io.BytesIO(SECRET_ROW), len(SECRET_ROW))
    return _weed_for(s3_settings)


def _http(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int | None, bytes]:
    """(status, body) of a plain HTTP request, or (None, why) when the port refused to talk."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as err:
        return None, repr(err).encode()
    finally:
        conn.close()


def _https_without_client_cert(port: int, path: str) -> tuple[int | None, bytes]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_S, context=context)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as err:
        return None, repr(err).encode()
    finally:
        conn.close()


def _refused(status: int | None, body: bytes) -> bool:
    """No data, no write: not a 2xx/3xx answer, and nothing of the stored row or the tree in the body."""
    if status is not None and status < 400:
        return False
    return b"tenant" not in body and b"a row only its tenant" not in body and b"fid" not in body


def _route_table(weed: Weed) -> list[tuple[str, int, str, str, bytes | None, dict[str, str]]]:
    p = weed.ports
    planted = "/buckets/closed-probe/tenants/tenant-a/planted.txt"
    form = {"Content-Type": "multipart/form-data; boundary=x"}
    upload = b'--x\r\nContent-Disposition: form-data; name="file"; filename="p.txt"\r\n\r\nplanted\r\n--x--\r\n'
    return [
        ("filer list", p["filer"], "GET", "/buckets/closed-probe/tenants/", None, {"Accept": "application/json"}),
        ("filer list root", p["filer"], "GET", "/", None, {"Accept": "application/json"}),
        ("filer read", p["filer"], "GET", f"/buckets/closed-probe/{KEY}", None, {}),
        ("filer metadata", p["filer"], "GET", f"/buckets/closed-probe/{KEY}?metadata=true", None, {}),
        ("filer write", p["filer"], "POST", planted, upload, form),
        ("filer put", p["filer"], "PUT", planted, b"planted", {}),
        ("filer delete", p["filer"], "DELETE", f"/buckets/closed-probe/{KEY}", None, {}),
        ("master UI", p["master"], "GET", "/", None, {}),
        ("master status", p["master"], "GET", "/dir/status", None, {}),
        ("master assign", p["master"], "GET", "/dir/assign", None, {}),
        ("master assign (POST)", p["master"], "POST", "/dir/assign", b"", {}),
        ("master lookup", p["master"], "GET", "/dir/lookup?volumeId=1", None, {}),
        ("master cluster", p["master"], "GET", "/cluster/status", None, {}),
        ("volume status", p["volume"], "GET", "/status", None, {}),
        ("volume UI", p["volume"], "GET", "/ui/index.html", None, {}),
        ("admin UI", p["admin"], "GET", "/", None, {}),
        ("admin API", p["admin"], "GET", "/api/cluster/topology", None, {}),
        ("admin login", p["admin"], "POST", "/login", b"username=admin&password=", {}),
    ]


def test_no_anonymous_http_route_answers(stored: Weed, s3_settings: S3Settings) -> None:
    closed = [name for name, port in stored.ports.items() if not servers.port_open(port)]
    assert not closed, f"not listening, so not probed: {closed}"  # a refused connection must not pass vacuously
    answered = []
    for name, port, method, path, body, headers in _route_table(stored):
        status, text = _http(port, method, path, body, headers)
        if not _refused(status, text):
            answered.append(f"{name}: {method} :{port}{path} -> {status} {text[:200]!r}")
        tls_status, tls_text = _https_without_client_cert(port, path)
        if tls_status is not None:  # the TLS handshake must fail without the stack's client certificate
            answered.append(f"{name} over TLS without a client cert: {path} -> {tls_status} {tls_text[:200]!r}")
    assert not answered, "\n".join(answered)
    # Nothing was written, nothing deleted: the row is intact and nothing was planted.
    client = _client(s3_settings)
    assert client.get_object("closed-probe", KEY).read() == SECRET_ROW
    names = [obj.object_name for obj in client.list_objects("closed-probe", "tenants/", recursive=True)]
    assert names == [KEY]


def _file_id(weed: Weed) -> str:
    """The volume file id of the stored row, asked as the store itself (its certificate and keys)."""
    shell = subprocess.run(
        [servers.weed_binary(), "shell", f"-master=127.0.0.1:{weed.ports['master']}.{weed.ports['master_grpc']}",
         f"-filer=127.0.0.1:{weed.ports['filer']}.{weed.ports['filer_grpc']}"],
        input=f"fs.meta.cat /buckets/closed-probe/{KEY}\n", capture_output=True, text=True, timeout=60,
        cwd=weed.data_dir,  # where its security.toml is
    )  # fmt: skip
    for line in shell.stdout.splitlines():
        if '"fileId"' in line:
            return line.split(":", 1)[1].strip().strip('",')
    raise AssertionError(f"weed shell named no file id:\n{shell.stdout[-2000:]}\n{shell.stderr[-2000:]}")


def test_a_real_file_id_reads_nothing_from_the_volume_server(stored: Weed) -> None:
    fid = _file_id(stored)
    port = stored.ports["volume"]
    status, body = _http(port, "GET", f"/{fid}")
    assert _refused(status, body) and SECRET_ROW not in body, (status, body[:200])
    status, body = _https_without_client_cert(port, f"/{fid}")
    assert status is None, (status, body[:200])
    # Even with the store's own client certificate, a read needs a JWT that only the store signs.
    tls = stored.data_dir / "tls"
    context = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    context.check_hostname = False
    context.load_cert_chain(str(tls / "weed.crt"), str(tls / "weed.key"))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_S, context=context)
    try:
        conn.request("GET", f"/{fid}")
        response = conn.getresponse()
        assert response.status == 401 and SECRET_ROW not in response.read()
    finally:
        conn.close()


GRPC_METHODS = {
    "master_grpc": "/master_pb.Seaweed/GetMasterConfiguration",
    "filer_grpc": "/filer_pb.SeaweedFiler/GetFilerConfiguration",
    "volume_grpc": "/volume_server_pb.VolumeServer/VolumeServerStatus",
    "s3_grpc": "/s3_pb.SeaweedS3/Configure",
    "admin_grpc": "/worker_pb.WorkerService/WorkerStream",
}


def test_no_grpc_port_talks_without_the_stores_certificate(stored: Weed) -> None:
    ca = (stored.data_dir / "tls" / "ca.crt").read_bytes()
    answered = []
    for name, method in GRPC_METHODS.items():
        target = f"127.0.0.1:{stored.ports[name]}"
        tls_only = grpc.ssl_channel_credentials(ca)
        for how, channel in (("plain", grpc.insecure_channel(target)),
                             ("TLS, no client cert", grpc.secure_channel(target, tls_only))):  # fmt: skip
            with channel:
                try:
                    channel.unary_unary(method)(b"", timeout=PROBE_TIMEOUT_S)
                    answered.append(f"{name} {how}: answered")
                except grpc.RpcError as err:
                    if err.code() != grpc.StatusCode.UNAVAILABLE:  # anything else means it talked
                        answered.append(f"{name} {how}: {err.code().name} {err.details()}")
    assert not answered, "\n".join(answered)
    # The probe itself reaches these ports: with the store's certificate the master answers.
    tls = stored.data_dir / "tls"
    creds = grpc.ssl_channel_credentials(ca, (tls / "weed.key").read_bytes(), (tls / "weed.crt").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{stored.ports['master_grpc']}", creds) as channel:
        channel.unary_unary(GRPC_METHODS["master_grpc"])(b"", timeout=PROBE_TIMEOUT_S)


def test_s3_serves_signed_requests_and_presigned_urls_only(stored: Weed, s3_settings: S3Settings) -> None:
    base, port = f"http://{s3_settings.endpoint}", stored.ports["s3"]
    status, body = _http(port, "GET", f"/closed-probe/{KEY}")
    assert status == 403 and SECRET_ROW not in body
    status, body = _http(port, "GET", "/closed-probe/?list-type=2")
    assert status == 403 and b"tenants/" not in body
    status, _ = _http(port, "PUT", "/closed-probe/tenants/x/planted", b"x")
    assert status == 403
    with pytest.raises(S3Error) as refused:
        _client(s3_settings, secret="not-the-secret-" + "x" * 20).get_object("closed-probe", KEY)
    assert refused.value.code in {"SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId"}

    client = _client(s3_settings)
    assert client.get_object("closed-probe", KEY).read() == SECRET_ROW
    put_url = client.presigned_put_object("closed-probe", "tenants/tenant-a/presigned.txt", datetime.timedelta(hours=1))
    assert put_url.startswith(base)
    with urllib.request.urlopen(urllib.request.Request(put_url, data=b"via a presigned URL", method="PUT")) as resp:
        assert resp.status == 200
    get_url = client.presigned_get_object("closed-probe", "tenants/tenant-a/presigned.txt")
    with urllib.request.urlopen(get_url) as resp:
        assert resp.read() == b"via a presigned URL"
    # A presigned URL names its object and carries its signature: another key, or a changed one, is refused.
    other = put_url.replace("presigned.txt", "other.txt")
    parts = urllib.parse.urlsplit(get_url)
    query = urllib.parse.parse_qs(parts.query)
    query["X-Amz-Signature"] = ["0" * 64]
    forged = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, doseq=True)))
    for url, method, data in ((other, "PUT", b"x"), (forged, "GET", None)):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url, data=data, method=method))
        assert err.value.code == 403
    client.remove_object("closed-probe", "tenants/tenant-a/presigned.txt")


def _reachable_by_others(path: Path) -> bool:
    """Whether a user outside the owner's group could open ``path``: every folder above must grant o+x."""
    return all(folder.stat().st_mode & stat.S_IXOTH for folder in path.parents)


def _readable_as_nobody(path: Path) -> bool | None:
    """Try for real as ``nobody`` (only when running as root); None when that can't be tried."""
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        pwd.getpwnam("nobody")
    except KeyError:
        return None
    done = subprocess.run(["cat", str(path)], user="nobody", group="nogroup", extra_groups=[],
                          capture_output=True, timeout=30)  # fmt: skip
    return done.returncode == 0


def test_the_data_directory_is_the_stack_users_only(stored: Weed) -> None:
    data = stored.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    open_to_others = []
    for root, dirs, files in os.walk(data):
        for name in dirs:
            if stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) & 0o077:
                open_to_others.append(os.path.join(root, name))
        for name in files:
            path = os.path.join(root, name)
            # weed writes each volume's .vif (version, replication: no object data) 0644 itself; the 0700
            # directory above keeps it unreachable all the same.
            if name.endswith(".vif") or os.path.islink(path):
                continue
            if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
                open_to_others.append(f"{path} {oct(os.stat(path).st_mode)}")
    assert not open_to_others, "\n".join(open_to_others)
    volumes = sorted(data.glob("*.dat"))
    assert volumes and any(SECRET_ROW.strip() in volume.read_bytes() for volume in volumes)
    for secret in (*volumes, data / "s3.json", data / "security.toml", data / "tls" / "weed.key"):
        assert not _reachable_by_others(secret), secret
        assert _readable_as_nobody(secret) in (False, None), secret


def _ray_temp_dir(ray: RayCluster) -> Path:
    """The ``--temp-dir`` of the fixture's Ray head, from the command line of its ``ray start``."""
    port = urllib.parse.urlsplit(ray.dashboard).port
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if "start" in " ".join(args) and f"--dashboard-port={port}" in args:
            return Path(next(arg.split("=", 1)[1] for arg in args if arg.startswith("--temp-dir=")))
    raise AssertionError(f"no ray start with --dashboard-port={port}")


def test_ray_session_logs_are_the_stack_users_only(ray_cluster: RayCluster) -> None:
    temp_dir = _ray_temp_dir(ray_cluster)
    logs = temp_dir / "session_latest" / "logs"
    assert logs.is_dir(), logs
    assert stat.S_IMODE(temp_dir.parent.stat().st_mode) == 0o700
    some_log = next(path for path in logs.iterdir() if path.is_file())
    assert not _reachable_by_others(some_log), some_log
    assert _readable_as_nobody(some_log) in (False, None), some_log


def test_the_stacks_ray_temp_dir_sits_in_a_private_folder(tmp_path: Path) -> None:
    from distillery.stack import ray_head

    assert ray_head.temp_dir_for(Path("/s")) == Path("/s/ray/r")
    far = ray_head.temp_dir_for(tmp_path / ("long" * 10))
    assert far.parent.parent == Path("/tmp") and len(str(far)) <= ray_head.MAX_TEMP_DIR_CHARS
    temp_dir = tmp_path / "ray" / "r"
    temp_dir.parent.mkdir(mode=0o755)  # as an older stack left it
    ray_head.head_command(ray_head.RayPorts.pick(), temp_dir, 1)
    assert stat.S_IMODE(temp_dir.parent.stat().st_mode) == 0o700


def test_the_probe_counts_any_answer_with_data() -> None:
    assert not _refused(200, b"{}")
    assert not _refused(404, b'{"fid":"1,01"}')
    assert _refused(None, b"ConnectionResetError()")
    assert _refused(400, b"Client sent an HTTP request to an HTTPS server.")


def test_ray_sessions_of_the_old_layout_are_removed_when_the_head_starts(tmp_path: Path) -> None:
    """Sessions an earlier version kept in ``$DISTILLERY_HOME/ray`` logged jobs' keys: the next start removes
    them, keeps the new layout's folder, and makes the parent the stack user's only."""
    parent = tmp_path / "ray"
    old = parent / "session_2026-01-01_00-00-00_1" / "logs"
    old.mkdir(parents=True)
    (old / "runtime_env_agent.log").write_text("DISTILLERY_S3_SECRET_KEY=...")
    (parent / "session_latest").symlink_to(old.parent)
    current = parent / "r"  # temp_dir_for's folder where the home's path is short enough
    current.mkdir(parents=True)
    ray_head.make_parent_private(current)
    assert sorted(p.name for p in parent.iterdir()) == [current.name]
    assert stat.S_IMODE(parent.stat().st_mode) == 0o700
