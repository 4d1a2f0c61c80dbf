# syntax=docker/dockerfile:1.7
# The services' image, distillery/service:<version>: registry, ingest, teacher, trainer and gateway, each run as
# `python -m services.<name>` (the Helm chart sets the command; `python -m services.migrate` for migrations).
#
#   docker build -f deploy/docker/service.Dockerfile -t distillery/service:0.1.0 .      (from the repository root)
#
# What gets installed is deploy/native/install.sh's, the same script `make setup` runs (the server extra, torch
# from PyTorch's CPU index). Built in a builder stage; the runtime stage gets the interpreter, the venv and the
# code only, owned by root and read-only to the user that runs them (10001), so the root filesystem can be
# mounted read-only: at run time only /tmp and $HOME/.cache (emptyDirs in the chart) are written.
# Layout shared with deploy/docker/ray-worker.Dockerfile, so the trainer's Ray jobs find the same interpreter
# (/opt/distillery/venv/bin/python) and code (/opt/distillery/app) on the Ray workers.
#
# Pins: the base image by tag and digest, uv by version (its image by tag), Python by version, every Python
# package by pyproject.toml. Refresh a digest with `docker buildx imagetools inspect <image>:<tag>`.

ARG BASE_IMAGE=debian:bookworm-20251229-slim@sha256:d5d3f9c23164ea16f31852f95bd5959aad1c5e854332fe00f7b3a20fcc9f635c
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.8

FROM ${UV_IMAGE} AS uv

FROM ${BASE_IMAGE} AS builder
# CPython from python-build-standalone (uv's managed builds): the same interpreter on every base image.
ARG PYTHON_VERSION=3.11.14
ARG TORCH_INDEX=cpu
ENV UV_PYTHON_INSTALL_DIR=/opt/distillery/python \
    UV_PYTHON_PREFERENCE=only-managed \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --seed --python "${PYTHON_VERSION}" /opt/distillery/venv
WORKDIR /opt/distillery/app
# What install.sh and the editable install read; the code after, so a code change keeps the dependency layer.
COPY pyproject.toml README.md ./
COPY deploy/native/ deploy/native/
COPY distillery/ distillery/
COPY services/ services/
# The registry's built-in steering vectors are computed from these pairs on first use (docs/optimization.md).
COPY examples/steering/ examples/steering/
RUN deploy/native/install.sh /opt/distillery/venv/bin/python --extras server --torch-index "${TORCH_INDEX}" \
    && /opt/distillery/venv/bin/python -m compileall -q distillery services

FROM ${BASE_IMAGE} AS runtime
ARG UID=10001
RUN groupadd --system --gid "${UID}" distillery \
    && useradd --system --uid "${UID}" --gid "${UID}" --home-dir /home/distillery --create-home \
       --shell /usr/sbin/nologin distillery
COPY --from=builder /opt/distillery /opt/distillery
# Login shells (`bash -l`, as KubeRay starts Ray) reset PATH from /etc/profile: put the venv back on it there too.
# TLS roots without distribution packages: where the base has no CA bundle (Debian slim), the one certifi ships
# (Mozilla's, from pyproject's pins) at the path OpenSSL, urllib3 and pyarrow's S3 client look in. Mount your own
# bundle there, or point SSL_CERT_FILE at it, for an object store or API behind a private CA.
RUN echo "export PATH=/opt/distillery/venv/bin:\${PATH}" >/etc/profile.d/distillery-venv.sh \
    && if [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
         mkdir -p /etc/ssl/certs \
         && ln -s /opt/distillery/venv/lib/python3.11/site-packages/certifi/cacert.pem /etc/ssl/certs/ca-certificates.crt; \
       fi
ENV PATH=/opt/distillery/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/distillery/venv \
    HOME=/home/distillery \
    XDG_CACHE_HOME=/home/distillery/.cache \
    HF_HOME=/home/distillery/.cache/huggingface \
    TRITON_CACHE_DIR=/home/distillery/.cache/triton \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
WORKDIR /opt/distillery/app
USER ${UID}:${UID}
# No default service: the chart names one (`python -m services.<name>`).
CMD ["distillery", "--help"]
