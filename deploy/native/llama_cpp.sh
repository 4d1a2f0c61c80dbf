#!/usr/bin/env bash
# Builds llama-cpp-python (llama.cpp's server: the local platform teacher) as a portable wheel and
# installs it into the Python environment given as $1. The one place its build flags live: `make
# setup` runs this script, and so will the images.
#
# Portable: llama.cpp's default build is tuned to the building machine's CPU (-march=native), and
# such a build dies with SIGILL ("Illegal instruction") on a machine without the building one's
# instruction sets. Here nothing is tuned to this CPU (GGML_NATIVE=OFF); the always-loaded libraries
# (libllama, libggml, libggml-base) use the x86-64 baseline, and the CPU backend is built as one
# loadable module per CPU generation (GGML_BACKEND_DL, GGML_CPU_ALL_VARIANTS: x64, sse42, haswell,
# skylakex, icelake, zen4, sapphirerapids, ...) next to them in llama_cpp/lib. At load time
# ggml scores every module against the running CPU and loads the best one it can run
# (distillery/stack/llama_server.py tells it where they are and logs which one it took).
#
# Built once per version and flag set, into ${XDG_CACHE_HOME:-~/.cache}/distillery/wheels/<key>/,
# never from or into pip's own wheel cache (which would hand back a wheel built with other flags).
# All variants take about 20 minutes on 2 cores; later runs and fresh clones reuse the wheel.
set -euo pipefail

PYTHON=${1:?usage: deploy/native/llama_cpp.sh PYTHON}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# The version is pinned once, in pyproject.toml's platform-teacher extra.
VERSION=$(sed -n 's/.*"llama-cpp-python\[server\]==\([0-9.]*\)".*/\1/p' "$ROOT/pyproject.toml")
[[ -n "$VERSION" ]] || { echo "no llama-cpp-python[server]==<version> pin in pyproject.toml" >&2; exit 1; }

LLAMA_CMAKE_ARGS=(
  -DGGML_NATIVE=OFF            # nothing tuned to the building machine
  -DGGML_BACKEND_DL=ON         # backends are modules, chosen at load time
  -DGGML_CPU_ALL_VARIANTS=ON   # one CPU module per instruction-set level
  -DGGML_BACKEND_DIR:STRING=llama_cpp/lib  # where the modules go in the wheel (STRING: a PATH would be made absolute)
  -DLLAVA_BUILD=OFF            # the teacher serves text only
)
KEY=$(printf '%s\n' "$VERSION" "$(uname -m)" "${LLAMA_CMAKE_ARGS[@]}" | sha256sum | cut -c1-16)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/distillery/wheels/llama-cpp-python-$VERSION-$KEY

wheel=$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -1 || true)
if [[ -z "$wheel" ]]; then
  echo "building llama-cpp-python $VERSION for any x86-64 CPU (all CPU variants; about 20 minutes on 2 cores)"
  echo "  CMAKE_ARGS=${LLAMA_CMAKE_ARGS[*]}"
  mkdir -p "$(dirname "$CACHE")"
  partial=$(mktemp -d "$CACHE.partial.XXXXXX")
  trap 'rm -rf "$partial"' EXIT
  CMAKE_ARGS="${LLAMA_CMAKE_ARGS[*]}" "$PYTHON" -m pip wheel -q --no-deps --no-cache-dir \
    --no-binary llama-cpp-python -w "$partial" "llama-cpp-python==$VERSION"
  rm -rf "$CACHE" && mv "$partial" "$CACHE"
  wheel=$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl | head -1)
fi
# This wheel replaces whatever llama-cpp-python was installed (a native build from pip's cache, say);
# then its [server] extra's dependencies.
"$PYTHON" -m pip install -q --no-deps --force-reinstall "$wheel"
"$PYTHON" -m pip install -q "llama-cpp-python[server]==$VERSION"
echo "llama-cpp-python $VERSION: portable build from $wheel"
