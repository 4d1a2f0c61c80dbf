"""What the training-step benchmarks share (``bench_whisper_steps``, ``bench_ocr_steps``): timing a step function
after a warm-up, and the report of a full fine-tune (the baseline) against LoRA, measured in the same run."""

from __future__ import annotations

import time
from collections.abc import Callable


def steps_per_second(step: Callable[[], None], steps: int, device: str) -> float:
    """``step`` once to warm up (allocation, kernels), then ``steps`` times on the clock."""
    import torch

    step()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - started)


def report(title: str, unit: str, batch: int, full: tuple[float, int], lora: tuple[float, int], rank: int) -> None:
    """Print each mode's steps/s, ``unit``s a second and trained parameters, then LoRA's speed over full's."""
    print(title)
    for name, (speed, params) in (("full fine-tune", full), (f"LoRA r {rank}", lora)):
        print(f"  {name:<15} {speed:8.3f} steps/s  {speed * batch:8.2f} {unit}/s  ({params / 1e6:,.1f}M trained)")
    print(f"  {'LoRA / full':<15} {lora[0] / full[0]:8.2f}x")
