"""Run one function in a fresh interpreter and measure its time and peak memory.

The hostile-input tests use it: each hostile file must get its specific code in
under 5 s and under 300 MB of memory beyond what the interpreter held once the
module was imported. The peak is the kernel's high-water mark of resident memory
(``VmHWM``), reset once the module is imported, so it counts this call alone, C
allocations (orjson, Pillow, zlib) included. (``ru_maxrss`` would not do: a child
inherits its parent's.)

    result = run_bounded("services.ingest.jsonl:codes_of", str(path))
    assert result.value == ["line_too_long"] and result.seconds < 5 and result.extra_mib < 300
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

SECONDS = 5.0
EXTRA_MIB = 300.0

_RUNNER = r"""
import importlib, json, sys, time

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

module, name = sys.argv[1].split(":")
function = getattr(importlib.import_module(module), name)
args = json.loads(sys.argv[2])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to what is resident now
before = kib("VmRSS")
start = time.perf_counter()
value = function(*args)
seconds = time.perf_counter() - start
print(json.dumps({"value": value, "seconds": seconds, "extra_mib": (kib("VmHWM") - before) / 1024}))
"""


@dataclass(frozen=True)
class Bounded:
    value: Any
    seconds: float
    extra_mib: float

    def within_bounds(self) -> bool:
        return self.seconds < SECONDS and self.extra_mib < EXTRA_MIB


def run_bounded(target: str, *args: Any, timeout: float = 60) -> Bounded:
    """Call ``module:function(*args)`` (JSON-able args and result) in a new interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER, target, json.dumps(args)], capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise AssertionError(f"{target} failed:\n{done.stderr[-4000:]}")
    return Bounded(**json.loads(done.stdout.strip().splitlines()[-1]))
