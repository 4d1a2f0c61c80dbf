"""llama.cpp's OpenAI-compatible server, with the CPU backend this machine can run.

    python -m distillery.stack.llama_server --model FILE ... (llama_cpp.server's flags)
    python -m distillery.stack.llama_server --backend     (prints the CPU backend it would load)

``deploy/native/llama_cpp.sh`` builds llama.cpp portable: the always-loaded
libraries use the x86-64 baseline, and the CPU backend is one module per
instruction-set level (``llama_cpp/lib/libggml-cpu-<variant>.so``: x64, sse42,
haswell, skylakex, icelake, sapphirerapids, ...). ggml scores every module
against the running CPU and loads the best it can run, but it looks for them
only next to the executable (here the Python interpreter) and in the working
directory. So this module loads them from the package's own ``lib`` directory
before ``llama_cpp.server`` starts (``llama_backend_init`` loads nothing more once
a backend is there), and logs which variant it took. A build without loadable
backends (llama.cpp's default, tuned to the building CPU) reports ``built in``.
"""

from __future__ import annotations

import ctypes
import re
import sys
from pathlib import Path

BUILT_IN = "built in"
_VARIANT = re.compile(r"libggml-cpu-([A-Za-z0-9_.]+)\.so")


def library_dir() -> Path:
    """Where llama-cpp-python keeps libllama, libggml and the CPU modules."""
    import llama_cpp  # loads libllama and, with it, libggml

    return Path(llama_cpp.__file__).parent / "lib"


def variants(directory: Path) -> list[str]:
    """The CPU backend modules built into ``directory`` (empty for a build without loadable backends)."""
    return sorted(m.group(1) for path in directory.glob("libggml-cpu-*.so") if (m := _VARIANT.fullmatch(path.name)))


def load_cpu_backend() -> str:
    """Load the best CPU module for this machine into this process; its variant name, or ``built in``."""
    directory = library_dir()
    if not variants(directory):
        return BUILT_IN
    ggml = ctypes.CDLL(str(directory / "libggml.so"))
    ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_load_all_from_path(str(directory).encode())
    # ggml opens every module to score it and keeps only the one it chose mapped.
    loaded = {m.group(1) for line in Path("/proc/self/maps").read_text().splitlines() if (m := _VARIANT.search(line))}
    if len(loaded) != 1:
        raise RuntimeError(
            f"expected one llama.cpp CPU backend loaded from {directory}, found {sorted(loaded) or 'none'}"
        )
    return loaded.pop()


def main() -> None:
    variant = load_cpu_backend()
    if sys.argv[1:] == ["--backend"]:
        print(variant)
        return
    print(f"llama.cpp CPU backend: {variant} (built: {', '.join(variants(library_dir())) or BUILT_IN})", flush=True)
    from llama_cpp.server.__main__ import main as serve

    sys.argv[0] = "llama_cpp.server"
    serve()


if __name__ == "__main__":
    main()
