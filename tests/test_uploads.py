"""Uploads over real gRPC: resumed after a real dropped connection, presigned PUTs to the
S3 server, bundles, limits, and reuse of identical content."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from conftest import INGEST_MAX_UPLOAD_BYTES, INGEST_PART_BYTES
from minio import Minio

from distillery.client import Client
from distillery.ingest.v1 import ingest_pb2
from distillery.uploads import Upload, requests, send, send_presigned

PAIRS = ingest_pb2.DATASET_KIND_PAIRS


def pairs_file(path: Path, rows: int) -> Path:
    with path.open("w") as f:
        for i in range(rows):
            row = {"system_prompt": "Sort the ticket.", "input": f"ticket {i}: " + "words " * 40, "output": f"c{i % 7}"}
            f.write(json.dumps(row) + "\n")
    return path


class CuttingProxy:
    """A TCP proxy to the service that cuts every connection once after ``cut_after`` bytes have
    gone upstream: a real dropped connection, as a flaky network gives."""

    def __init__(self, upstream: str, cut_after: int, ready: Callable[[], bool] = lambda: True) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.cut_after = cut_after
        # Past ``cut_after`` the proxy holds the stream until ``ready()`` (at most a minute), then cuts.
        self.ready = ready
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, dest: socket.socket, upstream: bool) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                dest.sendall(data)
                sent += len(data)
                if upstream and self.cuts == 0 and sent > self.cut_after:
                    deadline = time.monotonic() + 60
                    while not self.ready() and time.monotonic() < deadline:
                        time.sleep(0.1)
                    self.cuts += 1
                    break
        except OSError:
            pass
        for sock in (source, dest):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()


def test_a_dropped_connection_resumes_from_the_acknowledged_offset(services, client_for, make_tenant, tmp_path):
    tenant = make_tenant()
    path = pairs_file(tmp_path / "big.jsonl", 30000)  # about 9.5 MB
    size = path.stat().st_size
    upload = Upload([path], PAIRS)
    direct = client_for(tenant).ingest

    def service_kept_a_part() -> bool:  # the service has handled some of the stream, not only buffered it
        try:
            request = ingest_pb2.GetUploadStatusRequest(upload_id=upload.upload_id)
            return direct.GetUploadStatus(request).acknowledged_offset > 0
        except grpc.RpcError:
            return False

    proxy = CuttingProxy(services.address("ingest"), cut_after=size * 2 // 3, ready=service_kept_a_part)
    flaky = Client({"ingest": proxy.address}, tenant.api_key, timeout=60)
    sent: list[int] = []
    try:
        reply = send(flaky.ingest, upload, on_progress=sent.append)
    finally:
        proxy.close()
        flaky.close()
    assert proxy.cuts == 1
    assert reply.dataset.valid and reply.dataset.rows == 30000 and not reply.reused
    assert reply.dataset.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # The second attempt started from a part boundary past zero: the first half was not sent again.
    restarts = [b for a, b in itertools.pairwise(sent) if b < a]
    assert len(restarts) == 1 and restarts[0] > 0 and restarts[0] % INGEST_PART_BYTES == 0
    status = client_for(tenant).ingest.GetUploadStatus(ingest_pb2.GetUploadStatusRequest(upload_id=reply.upload_id))
    assert status.acknowledged_offset == status.size_bytes == size


def test_a_resumed_stream_must_start_at_the_acknowledged_offset(services, client_for, make_tenant, tmp_path):
    client = client_for(make_tenant())
    path = pairs_file(tmp_path / "rows.jsonl", 8000)
    upload = Upload([path], PAIRS)
    header = upload.header()
    stream = requests(upload, header)
    cut = [next(stream) for _ in range(3)]  # the header and two 1 MiB chunks, then the client goes away

    def dropped():
        yield from cut
        time.sleep(0.5)
        raise ConnectionError("the client went away")

    with pytest.raises(grpc.RpcError):
        client.ingest.UploadDataset(dropped())
    status = client.ingest.GetUploadStatus(ingest_pb2.GetUploadStatusRequest(upload_id=upload.upload_id))
    # Everything that arrived was kept, the part still being gathered included.
    assert status.acknowledged_offset == 2 * 1024 * 1024
    assert status.size_bytes == path.stat().st_size

    header.offset = 0  # not where the service is
    with pytest.raises(grpc.RpcError) as err:
        client.ingest.UploadDataset(requests(upload, header))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"offset {status.acknowledged_offset}" in err.value.details()

    header.offset = status.acknowledged_offset
    reply = client.ingest.UploadDataset(requests(upload, header))
    assert reply.dataset.valid and reply.dataset.rows == 8000
    assert reply.dataset.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # Asking again with the same id after success gives the same dataset, not a second one.
    again = client.ingest.UploadDataset(requests(upload, header))
    assert again.dataset.id == reply.dataset.id and again.reused


def test_a_presigned_upload_is_put_to_s3_and_registered(services, client_for, make_tenant, tmp_path):
    client = client_for(make_tenant())
    path = pairs_file(tmp_path / "presigned.jsonl", 500)
    upload = Upload([path], PAIRS)
    presigned = client.ingest.CreateUploadUrl(ingest_pb2.CreateUploadUrlRequest(header=upload.header()))
    assert presigned.url.startswith(f"http://{services.s3.endpoint}/") and presigned.expires_at.seconds > 0
    with pytest.raises(grpc.RpcError) as err:  # registered before the PUT
        client.ingest.RegisterUpload(ingest_pb2.RegisterUploadRequest(upload_id=presigned.upload_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has not been PUT" in err.value.details()

    short = urllib.request.Request(presigned.url, data=path.read_bytes()[:100], method="PUT")
    urllib.request.urlopen(short, timeout=10).read()
    with pytest.raises(grpc.RpcError) as err:  # a PUT of fewer bytes than declared
        client.ingest.RegisterUpload(ingest_pb2.RegisterUploadRequest(upload_id=presigned.upload_id))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "is 100 bytes" in err.value.details()

    urllib.request.urlopen(urllib.request.Request(presigned.url, data=path.read_bytes(), method="PUT"), timeout=10)
    reply = client.ingest.RegisterUpload(ingest_pb2.RegisterUploadRequest(upload_id=presigned.upload_id))
    assert reply.dataset.valid and reply.dataset.rows == 500
    # The SDK's one-call form of the same, for a new file; and the same content again is reused.
    other = pairs_file(tmp_path / "other.jsonl", 300)
    assert send_presigned(client.ingest, Upload([other], PAIRS)).dataset.rows == 300
    assert send_presigned(client.ingest, Upload([path], PAIRS)).reused


def test_a_presigned_url_signs_one_object_only(services, client_for, make_tenant, tmp_path):
    client = client_for(make_tenant())
    path = pairs_file(tmp_path / "x.jsonl", 20)
    url = client.ingest.CreateUploadUrl(ingest_pb2.CreateUploadUrlRequest(header=Upload([path], PAIRS).header())).url
    elsewhere = url.replace("/staging/", "/datasets/")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(elsewhere, data=b"x", method="PUT"), timeout=10)
    assert err.value.code == 403


def test_staging_is_removed_once_the_dataset_is_stored(services, client_for, make_tenant, tmp_path):
    tenant = make_tenant()
    reply = send(client_for(tenant).ingest, Upload([pairs_file(tmp_path / "r.jsonl", 3000)], PAIRS))
    s3 = Minio(services.s3.endpoint, services.s3.access_key, services.s3.secret_key, secure=False)
    staged = list(s3.list_objects(services.s3.bucket, prefix=f"tenants/{tenant.tenant_id}/staging/", recursive=True))
    assert staged == [] and reply.dataset.valid


def test_headers_that_cannot_be_honoured_are_refused_naming_the_field(services, client_for, make_tenant, tmp_path):
    client = client_for(make_tenant())
    path = pairs_file(tmp_path / "p.jsonl", 10)

    def refused(header: ingest_pb2.UploadHeader, chunks: list[ingest_pb2.Chunk] = ()) -> grpc.RpcError:
        messages = [ingest_pb2.UploadDatasetRequest(header=header)]
        messages += [ingest_pb2.UploadDatasetRequest(chunk=c) for c in chunks]
        with pytest.raises(grpc.RpcError) as err:
            client.ingest.UploadDataset(iter(messages))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return err.value

    header = Upload([path], PAIRS).header()
    too_big = ingest_pb2.UploadHeader()
    too_big.CopyFrom(header)
    too_big.size_bytes = INGEST_MAX_UPLOAD_BYTES + 1
    assert "DISTILLERY_MAX_UPLOAD_BYTES" in refused(too_big).details()
    bad_name = ingest_pb2.UploadHeader()
    bad_name.CopyFrom(header)
    bad_name.filename = "../../etc/passwd"
    assert "plain name" in refused(bad_name).details()
    bad_id = ingest_pb2.UploadHeader()
    bad_id.CopyFrom(header)
    bad_id.upload_id = "../x"
    assert "upload_id" in refused(bad_id).details()
    # A bundle whose chunk claims the wrong file.
    manifest, audio = tmp_path / "m.jsonl", tmp_path / "a.wav"
    manifest.write_bytes(b'{"audio": "a.wav", "text": "hi"}\n')
    audio.write_bytes(b"RIFF")
    asr = Upload([manifest, audio], ingest_pb2.DATASET_KIND_ASR, manifest=manifest).header()
    details = refused(asr, [ingest_pb2.Chunk(data=b"RIFF", file=1)]).details()
    assert "send the files whole, in the header's order" in details
    no_manifest = Upload([audio], ingest_pb2.DATASET_KIND_ASR, manifest=manifest).header()
    no_manifest.manifest = "missing.jsonl"
    assert "is not one of the files" in refused(no_manifest).details()


def test_an_empty_upload_is_answered_with_its_empty_file_report_and_nothing_is_kept(
    services, client_for, make_tenant, tmp_path
):
    tenant = make_tenant()
    client = client_for(tenant)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    upload = Upload([empty], PAIRS)

    for report in (
        send(client.ingest, upload).report,
        client.ingest.ValidateDataset(requests(upload, upload.header())),
    ):
        assert (report.valid, report.rows, [(c.code, c.count) for c in report.counts]) == (
            False,
            0,
            [("empty_file", 1)],
        )
        [violation] = report.violations
        assert violation.code == "empty_file" and violation.entry == "empty.jsonl"
        assert "'empty.jsonl' is empty (0 bytes)" in violation.message and "send it again" in violation.message
    reply = send(client.ingest, upload)
    assert not reply.HasField("dataset") and not reply.reused

    # Nothing kept: no dataset, no object, no upload session.
    assert list(client.ingest.ListDatasets(ingest_pb2.ListDatasetsRequest()).datasets) == []
    s3 = Minio(services.s3.endpoint, services.s3.access_key, services.s3.secret_key, secure=False)
    assert list(s3.list_objects(services.s3.bucket, prefix=f"tenants/{tenant.tenant_id}/", recursive=True)) == []
    with pytest.raises(grpc.RpcError) as err:
        client.ingest.GetUploadStatus(ingest_pb2.GetUploadStatusRequest(upload_id=upload.upload_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # A presigned URL for nothing is refused, naming the file (there is nothing to PUT).
    with pytest.raises(grpc.RpcError) as err:
        client.ingest.CreateUploadUrl(ingest_pb2.CreateUploadUrlRequest(header=upload.header()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'empty.jsonl' is empty" in err.value.details() and "empty_file" in err.value.details()

    # Declaring 0 bytes and sending some is still a broken header.
    header = upload.header()
    header.upload_id = ""
    sneaked = [ingest_pb2.UploadDatasetRequest(header=header), ingest_pb2.UploadDatasetRequest(chunk={"data": b"x"})]
    with pytest.raises(grpc.RpcError) as err:
        client.ingest.UploadDataset(iter(sneaked))
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "more than the declared 0 bytes" in err.value.details()
    )
