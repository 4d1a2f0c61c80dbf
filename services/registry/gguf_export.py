"""The "gguf" export: llama.cpp's ``convert_hf_to_gguf.py`` run on a merged export, in a subprocess.

The converter is not a Python package: ``deploy/native/gguf_converter.sh`` (run by ``make setup``) takes
it from the pinned llama-cpp-python sdist into ``<venv>/share/distillery/llama.cpp-convert/``; the
registry finds it at ``Settings.gguf_converter`` (``DISTILLERY_GGUF_CONVERTER``). Without it, or when it
refuses the model (an architecture or tokenizer it does not know), the export is FAILED_PRECONDITION
saying why, with the converter's last line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from services.common.errors import FailedPrecondition

SCRIPT = "convert_hf_to_gguf.py"
# The most a conversion may take (a 1B model takes about a minute on 2 cores).
TIMEOUT_S = 1800.0
INSTALL_HINT = "install it with `make setup` (deploy/native/gguf_converter.sh)"


def default_converter() -> Path:
    """Where ``deploy/native/gguf_converter.sh`` puts the converter in this Python environment."""
    return Path(sys.prefix) / "share" / "distillery" / "llama.cpp-convert" / SCRIPT


def outtype(merged: Path) -> str:
    """The GGUF tensor type: the weights' own 16-bit type, else f16 (llama.cpp's usual)."""
    try:
        config = json.loads((merged / "config.json").read_text())
    except (OSError, ValueError):
        return "f16"
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "")
    return {"bfloat16": "bf16", "float32": "f32"}.get(dtype, "f16")


def convert(converter: Path, merged: Path, out: Path, timeout_s: float) -> Path:
    """Write ``out/model.gguf`` from the merged model directory ``merged``; returns its path."""
    if not converter.is_file():
        raise FailedPrecondition(
            f"the GGUF converter is not installed (no {converter}): {INSTALL_HINT}, or use --format merged",
            field="format",
        )
    out.mkdir(parents=True, exist_ok=True)
    target = out / "model.gguf"
    command = [sys.executable, str(converter), str(merged), "--outfile", str(target), "--outtype", outtype(merged)]
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # the converter's own gguf-py: the version it was written for
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise FailedPrecondition(
            f"llama.cpp's GGUF converter did not finish in {timeout_s:.0f} s: use --format merged",
            field="format",
        ) from None
    if done.returncode != 0 or not target.is_file():
        last = last_line(done.stderr + "\n" + done.stdout) or f"exit status {done.returncode}"
        raise FailedPrecondition(
            f"llama.cpp's GGUF converter refused this model: {last}. Use --format merged (safetensors) instead",
            field="format",
        )
    return target


_ERROR = re.compile(r"^[A-Za-z_.]*(Error|Exception)\b")


def last_line(output: str) -> str:
    """What the converter said last that says why: its exception's line, else its last line that is not a
    progress bar."""
    lines = [line.strip() for line in output.splitlines() if line.strip() and "it/s]" not in line]
    errors = [line for line in lines if _ERROR.match(line)]
    return (errors or lines or [""])[-1][:500]
