"""The hostile-input suite through the real ingest service: each hostile upload gets its
specific code in under 5 s, the service's memory (sampled while it works) grows by under
300 MB, and the service goes on serving. The files are built here; the per-module tests
(test_pairs, test_inputs, test_hostile_text, test_asr_ingest, test_ocr_ingest,
test_tools_import) measure the same bounds for each validator alone in a fresh process.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_asr_ingest import _zip, chunk, fmt, riff
from test_ocr_ingest import Raw, deflated_zeros, huge_png_header, raw_zip, render, write_zip

from distillery.ingest.v1 import ingest_pb2
from distillery.uploads import Upload, send

MIB = 1024 * 1024
PAIRS, ASR, OCR = ingest_pb2.DATASET_KIND_PAIRS, ingest_pb2.DATASET_KIND_ASR, ingest_pb2.DATASET_KIND_OCR
ROW = {"system_prompt": "Be brief.", "input": "Summarise the note", "output": "A summary"}


def jsonl(*lines: bytes) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def good(n: int = 12) -> list[bytes]:
    return [json.dumps({**ROW, "input": f"note {i}"}).encode() for i in range(n)]


# Each case: (name, kind, build(tmp_path) -> Upload, the code that must be reported, blocking?)
def text_case(name: str, data: bytes) -> Callable[[Path], Upload]:
    def build(tmp: Path) -> Upload:
        path = tmp / name
        path.write_bytes(data)
        return Upload([path], PAIRS)

    return build


def asr_case(clip: bytes) -> Callable[[Path], Upload]:
    def build(tmp: Path) -> Upload:
        manifest, audio = tmp / "manifest.jsonl", tmp / "clip.wav"
        manifest.write_bytes(jsonl(json.dumps({"audio": "clip.wav", "text": "hello there", "language": "en"}).encode()))
        audio.write_bytes(clip)
        return Upload([manifest, audio], ASR, manifest=manifest)

    return build


def ocr_case(make_zip: Callable[[Path], Path], image: str = "page.png") -> Callable[[Path], Upload]:
    def build(tmp: Path) -> Upload:
        manifest = tmp / "manifest.jsonl"
        manifest.write_bytes(jsonl(json.dumps({"image": image, "text": "hello"}).encode()))
        return Upload([manifest, make_zip(tmp / "images.zip")], OCR, manifest=manifest)

    return build


def nested_zip(path: Path) -> Path:
    inner = write_zip(path.with_name("inner.zip"), {"page.png": deflated_zeros(1)})
    middle = write_zip(path.with_name("middle.zip"), {"inner.zip": inner.read_bytes()})
    return write_zip(path, {"page.png": render("hello", "png"), "middle.zip": middle.read_bytes()})


def symlink_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("page.png", render("hello", "png"))
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
    return path


CHAT = {"messages": [{"role": r, "content": "a"} for r in ("system", "user", "assistant")]}
PNG = render("hello", "png")

CASES = [
    ("invalid UTF-8", text_case("p.jsonl", jsonl(*good(), b'{"input": "\xff\xfe", "output": "b"}')),
     "invalid_encoding", True),
    ("a 50 MB single line", text_case("p.jsonl", jsonl(*good(), b'{"input": "' + b"x" * (50 * MIB) + b'"}')),
     "line_too_long", True),
    ("deeply nested JSON", text_case("p.jsonl", jsonl(*good(), b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")),
     "nested_too_deeply", True),
    ("a number of 100k digits", text_case("p.jsonl", jsonl(*good(), b'{"input": ' + b"9" * 100_000 + b"}")),
     "number_too_large", True),
    ("duplicate keys", text_case("p.jsonl", jsonl(*good(), b'{"input": "b", "input": "c", "output": "d"}')),
     "duplicate_key", True),
    ("NUL bytes", text_case("p.jsonl", jsonl(*good(), b'{"system_prompt": "a", "input": "b\x00", "output": "c"}')),
     "nul_byte", True),
    ("mixed shapes", text_case("p.jsonl", jsonl(*good(), json.dumps(CHAT).encode())),
     "mixed_shapes", False),
    ("CSV formula cells", text_case("p.csv", b"system_prompt,input,output\r\n" + b"".join(
        b'Be brief.,=HYPERLINK("http://x"),+1\r\n' if i == 0 else b"Be brief.,note %d,ok\r\n" % i for i in range(12))),
     "formula_cell", False),
    ("a WAV with a lying header", asr_case(riff(fmt(), chunk(b"data", bytes(32), declared=2**32 - 1))),
     "declared_size_exceeds_data", True),
    ("an archive renamed .wav", asr_case(_zip()), "archive_not_allowed", True),
    ("a flat zip bomb", ocr_case(lambda p: raw_zip(p, [Raw("page.png", deflated_zeros(1024), 1024 * MIB)])),
     "compression_ratio_too_high", True),
    ("a nested zip bomb", ocr_case(nested_zip), "nested_archive", True),
    ("zip slip", ocr_case(lambda p: write_zip(p, {"../../evil.png": PNG, "page.png": PNG})),
     "unsafe_path", True),
    ("a symlink entry", ocr_case(symlink_zip), "symlink_entry", True),
    ("a 100k x 100k image header", ocr_case(lambda p: write_zip(p, {"page.png": huge_png_header(100_000, 100_000)})),
     "image_too_large", True),
]  # fmt: skip


class PeakMemory:
    """Samples this process's resident memory (the services run in it) every 5 ms."""

    def __init__(self) -> None:
        self.process = psutil.Process(os.getpid())
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return (self.peak - self.start) / MIB


@pytest.mark.parametrize(("name", "build", "code", "blocking"), CASES, ids=[c[0] for c in CASES])
def test_a_hostile_upload_gets_its_code_in_bounded_time_and_memory(
    services, client_for, make_tenant, tmp_path, name, build, code, blocking
):
    client = client_for(make_tenant())
    upload = build(tmp_path)
    memory = PeakMemory()
    started = time.perf_counter()
    reply = send(client.ingest, upload)
    seconds = time.perf_counter() - started
    extra_mib = memory.stop()
    report = reply.report
    found = {c.code for c in report.counts} if blocking else {c.code for c in report.warning_counts}
    assert code in found, (name, [(v.code, v.message) for v in [*report.violations, *report.warnings]])
    assert report.valid is not blocking
    where = next(v for v in [*report.violations, *report.warnings] if v.code == code)
    assert where.message and where.hint and (where.line or where.entry)
    assert seconds < 5, f"{name}: {seconds:.1f} s"
    assert extra_mib < 300, f"{name}: {extra_mib:.0f} MiB"
    # The service goes on serving: health, and an ordinary upload.
    with grpc.insecure_channel(services.address("ingest")) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    ordinary = tmp_path / "ordinary.jsonl"
    ordinary.write_bytes(jsonl(*good()))
    assert send(client.ingest, Upload([ordinary], PAIRS)).dataset.valid
