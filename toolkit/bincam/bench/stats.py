"""Latency statistics of per-iteration samples, and the spread of paired ratios.

Percentiles use linear interpolation between order statistics (NumPy's default, as trtexec and
perf_analyzer report them): for sorted samples ``x_0 ≤ … ≤ x_{n-1}``, ``p_q = x_i + f·(x_{i+1} − x_i)``
with ``i + f = q/100·(n − 1)``.
"""

from __future__ import annotations

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def latency_stats(samples_s, images_per_sample: int = 1) -> dict:
    """p50/p90/p95/p99, mean, std (sample, ddof=1), min, max in seconds, and images/s at p50."""
    x = np.asarray(samples_s, dtype=np.float64)
    if x.size == 0 or not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError("latency samples must be a non-empty list of finite non-negative seconds")
    out = {f"p{q}_s": float(np.percentile(x, q)) for q in PERCENTILES}
    out.update(mean_s=float(x.mean()), std_s=float(x.std(ddof=1)) if x.size > 1 else 0.0,
               min_s=float(x.min()), max_s=float(x.max()), n=int(x.size))
    out["images_per_s"] = images_per_sample / out["p50_s"] if out["p50_s"] > 0 else float("inf")
    return out


def ratio_stats(numerator_s, denominator_s) -> dict:
    """Median and interquartile range of per-iteration ratios ``a_i / b_i`` of paired samples
    (measured back to back), the noise band within which two runs should agree."""
    a, b = np.asarray(numerator_s, float), np.asarray(denominator_s, float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired samples must have the same non-zero length")
    r = a / b
    q25, q50, q75 = np.percentile(r, (25, 50, 75))
    return {"median": float(q50), "q25": float(q25), "q75": float(q75)}


def unpaired_ratio_stats(numerator_s, denominator_s, scale: float = 1.0) -> dict:
    """``scale·median(a) / median(b)`` for samples not taken back to back; the band divides the
    quartiles crosswise, ``[q25(a)/q75(b), q75(a)/q25(b)]``, so it holds both spreads."""
    a, b = np.asarray(numerator_s, float), np.asarray(denominator_s, float)
    if a.size == 0 or b.size == 0:
        raise ValueError("both sample lists must be non-empty")
    a25, a50, a75 = np.percentile(a, (25, 50, 75))
    b25, b50, b75 = np.percentile(b, (25, 50, 75))
    return {"median": float(scale * a50 / b50), "q25": float(scale * a25 / b75),
            "q75": float(scale * a75 / b25)}


def bands_overlap(x: dict, y: dict) -> bool:
    """True when two ``ratio_stats`` agree: each median lies within the other's IQR band."""
    return x["q25"] <= y["median"] <= x["q75"] and y["q25"] <= x["median"] <= y["q75"]
