"""Wall-clock timing of a callable: per-iteration samples after warm-up, with their median."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def timed(fn: Callable[[], object], iters: int, warmup: int = 2) -> dict:
    """``{"median_s", "min_s", "max_s", "samples_s"}`` of ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
            "samples_s": samples}
