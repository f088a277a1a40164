"""Error rates of binary attribute classifiers (NumPy only; the serving runtime may use them).

Per attribute, with labels ``y ∈ {0, 1}`` and logits ``z`` (decision ``z ≥ 0``):
``FNR = #(y=1 ∧ z<0) / #(y=1)``, ``FPR = #(y=0 ∧ z≥0) / #(y=0)``. The majority class is the one
with more *training* samples; minority-class error is the FNR when positives are the minority,
else the FPR (and the other way round for the majority-class error).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ErrorRates:
    """Per-attribute error rates (``[K]`` arrays; NaN where a class has no samples)."""

    fnr: np.ndarray
    fpr: np.ndarray
    minority_error: np.ndarray
    majority_error: np.ndarray
    error: np.ndarray

    def means(self) -> dict[str, float]:
        """Means over attributes, ignoring NaN."""
        return {k: float(np.nanmean(getattr(self, k))) if np.isfinite(getattr(self, k)).any()
                else float("nan")
                for k in ("fnr", "fpr", "minority_error", "majority_error", "error")}

    def per_attribute(self, names: list[str]) -> dict[str, dict[str, float]]:
        return {n: {k: float(getattr(self, k)[i]) for k in
                    ("fnr", "fpr", "minority_error", "majority_error", "error")}
                for i, n in enumerate(names)}


def error_rates(logits: np.ndarray, labels: np.ndarray,
                majority_positive: np.ndarray | list[bool]) -> ErrorRates:
    """Error rates for ``logits [N, K]``, ``labels [N, K]`` and the training majority per attribute."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).astype(bool)
    if logits.shape != labels.shape:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} differ in shape")
    pred = logits >= 0
    pos, neg = labels.sum(0), (~labels).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        fnr = np.where(pos > 0, (labels & ~pred).sum(0) / pos, np.nan)
        fpr = np.where(neg > 0, (~labels & pred).sum(0) / neg, np.nan)
    maj = np.asarray(majority_positive, dtype=bool)
    return ErrorRates(fnr=fnr, fpr=fpr, minority_error=np.where(maj, fpr, fnr),
                      majority_error=np.where(maj, fnr, fpr),
                      error=(pred != labels).mean(0) if len(labels) else np.full(pos.shape, np.nan))
