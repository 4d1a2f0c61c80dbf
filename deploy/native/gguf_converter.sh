#!/usr/bin/env bash
# Installs llama.cpp's Hugging Face -> GGUF converter (convert_hf_to_gguf.py, its `conversion` package and
# its own gguf-py) into the Python environment given as $1, at <prefix>/share/distillery/llama.cpp-convert/,
# where the registry's "gguf" exports find it (services/registry/gguf_export.py; DISTILLERY_GGUF_CONVERTER
# points elsewhere). The converter is no package of its own: it ships in the llama-cpp-python sdist on PyPI,
# the version pinned in pyproject.toml's platform-teacher extra, so the converter matches the teacher's
# llama.cpp. It also installs the converter's one requirement the environment lacks (sentencepiece). `make
# setup` runs this script.
#
# Idempotent and fast once cached: the sdist is downloaded once and only the converter's files are kept,
# in ${XDG_CACHE_HOME:-~/.cache}/distillery/llama.cpp-convert-<version>/ (written to a temporary directory
# and renamed into place, so a broken download is never used); the environment's copy is replaced only
# when its version differs.
set -euo pipefail

PYTHON=${1:?usage: deploy/native/gguf_converter.sh PYTHON}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=$(sed -n 's/.*"llama-cpp-python\[server\]==\([0-9.]*\)".*/\1/p' "$ROOT/pyproject.toml")
[[ -n "$VERSION" ]] || { echo "no llama-cpp-python[server]==<version> pin in pyproject.toml" >&2; exit 1; }

CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/distillery/llama.cpp-convert-$VERSION
PREFIX=$("$PYTHON" -c 'import sys; print(sys.prefix)')
DEST=$PREFIX/share/distillery/llama.cpp-convert

if [[ ! -f "$CACHE/convert_hf_to_gguf.py" ]]; then
  echo "fetching llama.cpp's GGUF converter from the llama-cpp-python $VERSION sdist"
  mkdir -p "$(dirname "$CACHE")"
  partial=$(mktemp -d "$CACHE.partial.XXXXXX")
  trap 'rm -rf "$partial"' EXIT
  "$PYTHON" -m pip download -q --no-binary :all: --no-deps -d "$partial/sdist" "llama-cpp-python==$VERSION"
  mkdir "$partial/files"
  tar -xzf "$partial"/sdist/llama_cpp_python-"$VERSION".tar.gz -C "$partial/files" --strip-components=3 \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/convert_hf_to_gguf.py" \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/conversion" \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/gguf-py" \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/LICENSE"
  echo "$VERSION" >"$partial/files/VERSION"
  tar -xzOf "$partial"/sdist/llama_cpp_python-"$VERSION".tar.gz \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/requirements/requirements-convert_legacy_llama.txt" \
    >"$partial/files/requirements-convert.txt"
  rm -rf "$CACHE" && mv "$partial/files" "$CACHE"
fi

if [[ "$(cat "$DEST/VERSION" 2>/dev/null || true)" != "$VERSION" ]]; then
  mkdir -p "$(dirname "$DEST")"
  rm -rf "$DEST.partial" && cp -r "$CACHE" "$DEST.partial"
  rm -rf "$DEST" && mv "$DEST.partial" "$DEST"
fi
# The one Python package the converter needs that the environment lacks: it imports sentencepiece before it
# falls back to a tokenizer.json vocabulary (Llama, Qwen2, SmolLM2, ...). The range is the converter's own.
if ! "$PYTHON" -c 'import sentencepiece' 2>/dev/null; then
  "$PYTHON" -m pip install -q "$(grep -h '^sentencepiece' "$CACHE"/requirements-convert.txt)"
fi
echo "llama.cpp's GGUF converter ($VERSION): $DEST/convert_hf_to_gguf.py"
