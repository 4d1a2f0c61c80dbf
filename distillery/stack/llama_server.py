"""llama.cpp's OpenAI-compatible server, with the CPU backend this machine can run.

    python -m distillery.stack.llama_server --model FILE ... (llama_cpp.server's flags)
    python -m distillery.stack.llama_server --backend     (prints the CPU backend it loads)

``deploy/native/llama_cpp.sh`` builds llama.cpp portable: the always-loaded
libraries use the x86-64 baseline, and the CPU backend is one module per
instruction-set level (``llama_cpp/lib/libggml-cpu-<variant>.so``: x64, sse42,
haswell, skylakex, icelake, zen4, sapphirerapids, ...). Each module scores
itself against the running CPU (``ggml_backend_score``: 0 when the CPU lacks
what it was built for). This module loads the best-scoring one from the
package's own ``lib`` directory before ``llama_cpp.server`` starts (ggml would
look only next to the Python interpreter and in the working directory;
``llama_backend_init`` loads nothing more once a backend is there), and logs
which variant it took.

**Not AMX by default.** On a VM whose CPU advertises AMX (``amx_tile``,
``amx_int8`` in /proc/cpuinfo, and the kernel grants the AMX permission), the
``sapphirerapids`` module died with SIGILL in its first large matrix product
(``tileloadd`` in an OpenMP worker): the tile configuration did not survive
there. Advertised is not usable, so AMX variants are skipped unless named:
``DISTILLERY_LLAMA_CPU_VARIANT=<variant>`` loads that variant (e.g.
``sapphirerapids`` on hardware where AMX works). A build without loadable
backends (llama.cpp's default, tuned to the building CPU) reports ``built in``.
"""

from __future__ import annotations

import _ctypes
import ctypes
import os
import re
import sys
from pathlib import Path

BUILT_IN = "built in"
VARIANT_VARIABLE = "DISTILLERY_LLAMA_CPU_VARIANT"
AMX_VARIANTS = frozenset({"sapphirerapids"})
_VARIANT = re.compile(r"libggml-cpu-([A-Za-z0-9_.]+)\.so")


def library_dir() -> Path:
    """Where llama-cpp-python keeps libllama, libggml and the CPU modules."""
    import llama_cpp  # loads libllama and, with it, libggml

    return Path(llama_cpp.__file__).parent / "lib"


def variants(directory: Path) -> list[str]:
    """The CPU backend modules built into ``directory`` (empty for a build without loadable backends)."""
    return sorted(m.group(1) for path in directory.glob("libggml-cpu-*.so") if (m := _VARIANT.fullmatch(path.name)))


def score(directory: Path, variant: str) -> int:
    """The variant's own score on this CPU (0: it cannot run here); the module is unloaded again."""
    module = ctypes.CDLL(str(directory / f"libggml-cpu-{variant}.so"))
    try:
        module.ggml_backend_score.restype = ctypes.c_int
        return int(module.ggml_backend_score())
    finally:
        _ctypes.dlclose(module._handle)


def choose(directory: Path) -> str:
    """The variant to load: the one named in DISTILLERY_LLAMA_CPU_VARIANT, else the best-scoring non-AMX one."""
    built = variants(directory)
    named = os.environ.get(VARIANT_VARIABLE, "").strip()
    if named:
        if named not in built:
            raise RuntimeError(f"{VARIANT_VARIABLE}={named}: not a CPU variant of this build ({', '.join(built)})")
        return named
    scores = {variant: score(directory, variant) for variant in built if variant not in AMX_VARIANTS}
    best = max(scores, key=lambda variant: scores[variant], default=None)
    if best is None or scores[best] <= 0:
        raise RuntimeError(f"no llama.cpp CPU variant in {directory} runs on this CPU (scores: {scores})")
    return best


def load_cpu_backend() -> str:
    """Load the chosen CPU module into this process (``choose``); its variant name, or ``built in``."""
    import llama_cpp

    directory = library_dir()
    if not variants(directory):
        return BUILT_IN
    variant = choose(directory)
    # The wheel holds libggml.so, .so.0 and .so.0.x as copies (wheels have no links): use the very file
    # libllama was linked with, or the backend would register in a second copy that libllama never sees.
    ggml = ctypes.CDLL(_mapped(re.compile(r"/libggml\.so[.0-9]*$")).pop())
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    if not ggml.ggml_backend_load(str(directory / f"libggml-cpu-{variant}.so").encode()):
        raise RuntimeError(f"llama.cpp could not load its CPU backend {variant} from {directory}")
    llama_cpp.llama_backend_init()
    if "CPU :" not in llama_cpp.llama_print_system_info().decode(errors="replace"):
        raise RuntimeError(f"llama.cpp does not see the CPU backend {variant} loaded from {directory}")
    return variant


def _mapped(pattern: re.Pattern[str]) -> set[str]:
    """Paths of the files mapped into this process that match ``pattern``."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[-1] for line in lines if len(line.split()) == 6 and pattern.search(line)}


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
