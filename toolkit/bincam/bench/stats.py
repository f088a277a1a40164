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


def _rounds(samples) -> list[np.ndarray]:
    """A flat list of samples is one round; a list of lists is one list per round."""
    samples = list(samples)
    if samples and np.ndim(samples[0]) == 0:
        samples = [samples]
    return [np.asarray(r, dtype=np.float64) for r in samples]


def _with_range(out: dict, per_round: list[float]) -> dict:
    values = per_round + [out["median"]]
    out.update(low=float(min(values)), high=float(max(values)), per_round=per_round)
    return out


def ratio_stats(numerator_s, denominator_s) -> dict:
    """Ratios ``a_i / b_i`` of samples measured back to back, given per round (list of lists) or
    as one round: the median and interquartile range over all iterations, each round's median,
    and ``low``/``high``, the range of the round medians (and the overall median) — the noise
    band that the run reports for drift between rounds."""
    a, b = _rounds(numerator_s), _rounds(denominator_s)
    if [len(r) for r in a] != [len(r) for r in b] or not sum(len(r) for r in a):
        raise ValueError("paired samples must have the same non-zero lengths in every round")
    ratios = [x / y for x, y in zip(a, b)]
    q25, q50, q75 = np.percentile(np.concatenate(ratios), (25, 50, 75))
    return _with_range({"median": float(q50), "q25": float(q25), "q75": float(q75)},
                       [float(np.median(r)) for r in ratios if len(r)])


def unpaired_ratio_stats(numerator_s, denominator_s, scale: float = 1.0) -> dict:
    """``scale·median(a) / median(b)`` for samples not taken back to back (per round or one
    round); the interquartile band divides the quartiles crosswise, ``[q25(a)/q75(b),
    q75(a)/q25(b)]``; ``low``/``high`` range over the per-round ratios of medians."""
    a, b = _rounds(numerator_s), _rounds(denominator_s)
    fa, fb = np.concatenate(a), np.concatenate(b)
    if fa.size == 0 or fb.size == 0:
        raise ValueError("both sample lists must be non-empty")
    a25, a50, a75 = np.percentile(fa, (25, 50, 75))
    b25, b50, b75 = np.percentile(fb, (25, 50, 75))
    per_round = [float(scale * np.median(x) / np.median(y)) for x, y in zip(a, b)
                 if len(x) and len(y)]
    return _with_range({"median": float(scale * a50 / b50), "q25": float(scale * a25 / b75),
                        "q75": float(scale * a75 / b25)}, per_round)


def bands_overlap(x: dict, y: dict) -> bool:
    """True when two ratios agree within the noise their runs report: their ranges over rounds
    (``low``–``high``) intersect."""
    return x["low"] <= y["high"] and y["low"] <= x["high"]
