"""The container images (deploy/docker/): hadolint finds nothing at warning level or above in any Dockerfile, and
every image installs through deploy/native/install.sh, the script `make setup` runs (one list of what gets
installed). No image is built here: the machine has no container daemon (docs/kubernetes.md, "Images")."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted((ROOT / "deploy" / "docker").glob("*.Dockerfile"))
HADOLINT = Path(sys.executable).parent / "hadolint"
INSTALL = "deploy/native/install.sh"
BLOCKING = {"error", "warning"}  # hadolint's levels at or above "warning"


def hadolint(path: Path) -> list[dict[str, object]]:
    """hadolint's findings for one Dockerfile (its JSON report; .hadolint.yaml at the root applies when there)."""
    done = subprocess.run([str(HADOLINT), "--no-fail", "--format", "json", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    findings: list[dict[str, object]] = json.loads(done.stdout or "[]")
    return findings


def stages(text: str) -> list[str]:
    """A Dockerfile's build stages, each from its FROM line on (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return re.split(r"(?m)^(?=FROM )", joined)[1:]


def test_there_are_the_service_and_ray_worker_images() -> None:
    assert [path.name for path in DOCKERFILES] == ["ray-worker.Dockerfile", "service.Dockerfile"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing_at_warning_level_or_above(path: Path) -> None:
    blocking = [f"{f['line']}: {f['code']} {f['message']}" for f in hadolint(path) if f["level"] in BLOCKING]
    assert not blocking, f"{path.name}:\n" + "\n".join(blocking)


def test_hadolint_catches_an_unpinned_install(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\nUSER root\n")
    codes = {f["code"] for f in hadolint(bad) if f["level"] in BLOCKING}
    assert {"DL3007", "DL3008"} <= codes, codes


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_an_image_installs_through_the_install_script_only(path: Path) -> None:
    text = path.read_text()
    runs = [line for line in re.sub(r"\\\n\s*", " ", text).splitlines() if line.startswith("RUN ")]
    assert sum(INSTALL in line for line in runs) == 1, "the image must run deploy/native/install.sh once"
    assert "--extras server " in text and "dev" not in re.findall(r"--extras (\S+)", text)[0]
    for line in runs:  # what gets installed is the script's: no second list here
        assert not re.search(r"\bpip3? install\b|\buv pip\b|\bapt-get install\b|\bapk add\b", line), line


def test_make_setup_installs_through_the_same_script() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"(?m)^\$\(STAMP\):[^\n]*\n((?:\t[^\n]*\n)+)", makefile)
    assert recipe, "the Makefile's setup stamp recipe"
    assert INSTALL in recipe.group(1) and "pip install" not in recipe.group(1)
    native = re.search(r"(?m)^NATIVE := (.*)$", makefile)
    assert native and INSTALL in native.group(1).split()  # a change to the script re-runs `make setup`


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_an_image_is_pinned_multi_stage_and_runs_as_a_numeric_non_root_user(path: Path) -> None:
    text = path.read_text()
    parts = stages(text)
    assert len(parts) >= 3 and " AS builder" in text and "COPY --from=builder /opt/distillery /opt/distillery" in text
    images = dict(re.findall(r"(?m)^ARG (\w+_IMAGE)=(\S+)$", text))
    assert images["BASE_IMAGE"].count("@sha256:") == 1 and ":latest" not in " ".join(images.values())
    assert re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+", images["UV_IMAGE"])
    runtime = parts[-1]
    assert runtime.startswith("FROM ${BASE_IMAGE} AS runtime")
    user = re.findall(r"(?m)^USER (\S+)$", runtime)
    assert user == ["${UID}:${UID}"] and re.search(r"(?m)^ARG UID=10001$", runtime)
    # the layout the chart and the trainer's Ray jobs rely on: the venv first on PATH, caches under $HOME/.cache
    assert "PATH=/opt/distillery/venv/bin:${PATH}" in runtime and "WORKDIR /opt/distillery/app" in runtime
    assert "XDG_CACHE_HOME=/home/distillery/.cache" in runtime and "HF_HOME=/home/distillery/.cache/" in runtime
    assert "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" in runtime  # TLS roots on a base without a CA bundle
    assert not re.search(r"(?i)(password|secret|token|api_key)\s*=", text)  # nothing secret baked in


def test_the_install_script_refuses_what_it_does_not_know() -> None:
    refused = [([], "usage"), (["python", "--bogus"], "usage"), (["python", "--torch-index", "rocm"], "cuXYZ")]
    for args, words in refused:
        done = subprocess.run([str(ROOT / INSTALL), *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2 and words in done.stderr, (args, done.stderr)
