"""How close an engine's CAMs are to a reference's on the same inputs, per attribute and overall.

Inputs are NumPy arrays from both sides: logits ``[B,K]``, raw maps ``[B,K,h,w]``, final maps
``[B,K,H,W]`` and PE ``[B,K]``. Per map:

- raw-map relative error ``‖r − r_ref‖₂ / ‖r_ref‖₂`` (0 when both are 0);
- final-map max abs difference;
- Pearson correlation of the final maps (1 when both are constant and equal, 0 when only one is);
- top-20 % region IoU: the region is the pixels at or above the map's 80th percentile that are
  also > 0 (an empty map has an empty region; two empty regions have IoU 1);
- PE abs difference (0 where both are NaN: an attribute without a mask); prediction flips
  compare ``z ≥ 0``.
"""

from __future__ import annotations

import numpy as np

TOP_FRACTION = 0.2


def _flat(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(*maps.shape[:2], -1).astype(np.float64)


def relative_error(raw: np.ndarray, ref: np.ndarray) -> np.ndarray:
    a, b = _flat(raw), _flat(ref)
    num, den = np.linalg.norm(a - b, axis=-1), np.linalg.norm(b, axis=-1)
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.where(num > 0, np.inf, 0.0))


def pearson(maps: np.ndarray, ref: np.ndarray) -> np.ndarray:
    a, b = _flat(maps), _flat(ref)
    a, b = a - a.mean(-1, keepdims=True), b - b.mean(-1, keepdims=True)
    sa, sb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    both_flat = (sa == 0) & (sb == 0)
    r = (a * b).sum(-1) / np.where((sa > 0) & (sb > 0), sa * sb, 1)
    return np.where(both_flat, 1.0, np.where((sa > 0) & (sb > 0), r, 0.0))


def top_region(maps: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    flat = _flat(maps)
    threshold = np.quantile(flat, 1 - fraction, axis=-1, keepdims=True)
    return (flat >= threshold) & (flat > 0)


def top_region_iou(maps: np.ndarray, ref: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    a, b = top_region(maps, fraction), top_region(ref, fraction)
    inter, union = (a & b).sum(-1), (a | b).sum(-1)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0)


def pe_abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|a − b|`` of two PE arrays; 0 where both are NaN (an attribute without a mask, e.g. a
    CSV dataset's label), ∞ where only one is."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both = np.isnan(a) & np.isnan(b)
    diff = np.abs(np.where(both, 0.0, a) - np.where(both, 0.0, b))
    return np.where(np.isnan(diff), np.inf, diff)


def per_map_figures(ours: dict, ref: dict) -> dict[str, np.ndarray]:
    """``[B,K]`` arrays of every figure (keys as in ``AGGREGATES``); the raw-map figure only when
    both sides have raw maps (the reference tool gives final maps only)."""
    figures = {
        "logits abs diff": np.abs(ours["logits"].astype(np.float64) - ref["logits"]),
        "prediction flips": ((ours["logits"] >= 0) != (ref["logits"] >= 0)).astype(np.float64),
        "final-map max abs diff": np.abs(_flat(ours["maps"]) - _flat(ref["maps"])).max(-1),
        "pearson": pearson(ours["maps"], ref["maps"]),
        "top-20% IoU": top_region_iou(ours["maps"], ref["maps"]),
        "PE abs diff": pe_abs_diff(ours["pe"], ref["pe"]),
    }
    if ours.get("raw") is not None and ref.get("raw") is not None:
        figures["raw-map rel error"] = relative_error(ours["raw"], ref["raw"])
    return figures


# how each figure is summarised: the worst case and the typical case
AGGREGATES = {
    "logits abs diff": ("max", "mean"), "prediction flips": ("sum", "mean"),
    "raw-map rel error": ("max", "median"), "final-map max abs diff": ("max", "median"),
    "pearson": ("min", "mean"), "top-20% IoU": ("min", "mean"), "PE abs diff": ("max", "mean"),
}
_REDUCE = {"max": np.max, "mean": np.mean, "sum": np.sum, "median": np.median, "min": np.min}


def compare(ours: dict, ref: dict, attributes: list[str]) -> dict:
    """``{"overall": {figure: {stat: v}}, "per_attribute": {attr: {figure: {stat: v}}}}``."""
    for key in ("logits", "raw", "maps", "pe"):
        if ours.get(key) is None or ref.get(key) is None:
            continue
        if np.shape(ours[key]) != np.shape(ref[key]):
            raise ValueError(f"{key}: shapes differ, {np.shape(ours[key])} vs {np.shape(ref[key])}")
    figures = per_map_figures(ours, ref)

    def summary(select) -> dict:
        return {name: {stat: float(_REDUCE[stat](values[select])) for stat in AGGREGATES[name]}
                for name, values in figures.items()}

    return {"overall": summary((slice(None), slice(None))),
            "per_attribute": {a: summary((slice(None), k)) for k, a in enumerate(attributes)}}
