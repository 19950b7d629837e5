"""Timing helpers shared by the benchmarks: wall time with device sync, interleaved medians."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes (CUDA work included)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def interleaved_medians(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int = 5,
                        warmup: int = 2) -> dict[str, float]:
    """Median seconds per function, the functions taking turns so that load drifts hit all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}
