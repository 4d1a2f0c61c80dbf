"""The platform teacher's llama.cpp runs on any x86-64 CPU (``deploy/native/llama_cpp.sh``).

A build tuned to the building machine (llama.cpp's default, ``-march=native``)
dies with SIGILL on a CPU without the builder's instruction sets. These tests read
the installed build itself: the libraries every process loads hold only x86-64
baseline instructions, the CPU code is built in several variants, and the one
loaded here is the best this CPU runs. The platform-teacher tests
(``test_platform_teacher.py``) ask the server real completions.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from distillery.stack import llama_server

# What each CPU variant of ggml needs, as /proc/cpuinfo names it (ggml/src/CMakeLists.txt's
# GGML_CPU_ALL_VARIANTS list; GGML_AVX512 is -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw).
_HASWELL = {"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2"}
_AVX512 = _HASWELL | {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}
NEEDS = {
    "x64": set(),
    "sse42": {"sse4_2"},
    "sandybridge": {"sse4_2", "avx"},
    "ivybridge": {"sse4_2", "avx", "f16c"},
    "piledriver": {"sse4_2", "avx", "f16c", "fma"},
    "haswell": _HASWELL,
    "alderlake": _HASWELL | {"avx_vnni"},
    "skylakex": _AVX512,
    "cannonlake": _AVX512 | {"avx512vbmi"},
    "cascadelake": _AVX512 | {"avx512_vnni"},
    "icelake": _AVX512 | {"avx512vbmi", "avx512_vnni"},
    "cooperlake": _AVX512 | {"avx512_vnni", "avx512_bf16"},
    "zen4": _AVX512 | {"avx512vbmi", "avx512_vnni", "avx512_bf16"},
    "sapphirerapids": _AVX512 | {"avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"},
}
# Beyond x86-64's baseline (SSE2): VEX/EVEX encodings (AVX..AVX-512, FMA, F16C: mnemonics starting
# with "v", ymm/zmm and mask registers), AMX tiles, BMI1/2, LZCNT/POPCNT and SSSE3/SSE4. Not tzcnt:
# GCC writes __builtin_ctz as `rep bsf`, which objdump shows as tzcnt and older CPUs run as bsf.
_BEYOND_BASELINE = re.compile(
    r"\t(v(?!err|erw|m)\w+|\w*tile\w*|pdep|pext|shlx|shrx|sarx|rorx|mulx|andn|bextr|blsi|blsr|blsmsk|lzcnt|"
    r"popcnt|pshufb|palignr|pblendvb|pblendw|ptest|pmulld|pminsd|pmaxsd|pminud|pmaxud|roundps|roundpd|roundss|"
    r"roundsd|dpps|dppd|pcmpeqq|pcmpgtq|pextr[bdq]|pinsr[bdq]|blendvps|blendvpd|blendps|blendpd|pmovzx\w+|pmovsx\w+)"
    r"\b|%[yz]mm\d+|%k[0-7]\b"
)


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    raise AssertionError("/proc/cpuinfo has no flags line")


def library(directory: Path, stem: str) -> Path:
    found = sorted(directory.glob(f"{stem}.so*"))
    assert found, f"{stem}.so is not in {directory}"
    return found[0]


def test_the_build_has_cpu_variants_for_every_level() -> None:
    built = llama_server.variants(llama_server.library_dir())
    assert {"x64", "sse42", "haswell", "skylakex", "icelake", "sapphirerapids"} <= set(built), built
    assert set(built) <= set(NEEDS), f"a variant this test does not know: {set(built) - set(NEEDS)}"


@pytest.mark.parametrize("stem", ["libllama", "libggml", "libggml-base", "libggml-cpu-x64"])
def test_always_loaded_code_uses_only_the_baseline_instruction_set(stem: str) -> None:
    path = library(llama_server.library_dir(), stem)
    disassembly = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert len(disassembly) > 10_000, f"objdump read nothing from {path}"
    beyond = [line.strip() for line in disassembly.splitlines() if _BEYOND_BASELINE.search(line)]
    assert not beyond, f"{path.name} uses instructions beyond x86-64's baseline: {beyond[:10]} ({len(beyond)} in all)"


def loaded_backend(**env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "distillery.stack.llama_server", "--backend"],
        capture_output=True, text=True, timeout=60, check=True, env={**os.environ, **env},
    )  # fmt: skip
    return done.stdout.strip()


def test_the_best_variant_this_cpu_runs_is_loaded_and_llama_cpp_sees_it() -> None:
    """``--backend`` exits non-zero unless libllama itself sees the loaded backend."""
    loaded = loaded_backend()
    flags = cpu_flags()
    assert loaded in NEEDS, f"loaded {loaded!r}, not a CPU variant of the portable build"
    assert NEEDS[loaded] <= flags, f"{loaded} needs {sorted(NEEDS[loaded] - flags)}, which this CPU lacks"
    assert loaded not in llama_server.AMX_VARIANTS  # advertised AMX died with SIGILL on such a VM: not by default
    runnable = [v for v in llama_server.variants(llama_server.library_dir()) if NEEDS[v] <= flags]
    better = [v for v in runnable if NEEDS[v] > NEEDS[loaded] and v not in llama_server.AMX_VARIANTS]
    assert not better, f"loaded {loaded} although this CPU runs {better}"


def test_an_operator_can_name_the_variant() -> None:
    assert loaded_backend(**{llama_server.VARIANT_VARIABLE: "x64"}) == "x64"
    with pytest.raises(subprocess.CalledProcessError) as refused:
        loaded_backend(**{llama_server.VARIANT_VARIABLE: "pentium4"})
    assert "not a CPU variant of this build" in refused.value.stderr
