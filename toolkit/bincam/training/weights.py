"""Attribute-specific class weights for the per-attribute BCE loss.

For attribute ``a`` with ``n⁺`` positive and ``n⁻`` negative training samples (``p = n⁺/(n⁺+n⁻)``):

- ``none``:     ``w⁺ = w⁻ = 1`` (the "unbalanced" model).
- ``balanced``: ``w⁺ = 1/(2p)``, ``w⁻ = 1/(2(1−p))`` — inverse frequency, so both classes contribute
  equally in expectation (``p·w⁺ = (1−p)·w⁻ = ½``) and the mean weight is 1.
- ``moon``:     MOON's re-balancing towards a 50/50 target (Rudd, Günther, Boult, "MOON: A Mixed
  Objective Optimization Network", ECCV 2016): the minority class keeps weight 1, the majority
  class is down-weighted to ``n_min / n_maj = p_min / p_maj``.

How ``moon`` differs from ``balanced``: within an attribute both give the same ratio
``w_maj / w_min = n_min / n_maj``; they differ by the per-attribute factor
``balanced = moon · N / (2·n_min)``. ``balanced`` keeps every attribute's mean weight at 1, so all
attributes weigh alike in the loss; ``moon``'s mean weight is ``2·p_min``, so a rare attribute
(and the whole loss of a K = 1 task) is scaled down. With one attribute that factor is a constant
loss scale, which Adam(W) nearly cancels (up to its ε): for K = 1 the two train alike, and the
comparison that matters is ``moon`` vs ``none``.

An attribute without samples of one class cannot be balanced; it keeps ``w⁺ = w⁻ = 1``.
"""

from __future__ import annotations

import numpy as np

WEIGHTINGS = ("none", "balanced", "moon")


def class_weights(positive: np.ndarray, negative: np.ndarray, weighting: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(w⁺ [K], w⁻ [K])`` from per-attribute training class counts."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}")
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    w_pos, w_neg = np.ones_like(pos), np.ones_like(pos)
    ok = (pos > 0) & (neg > 0)
    if weighting == "balanced":
        total = pos + neg
        w_pos = np.where(ok, total / np.maximum(2 * pos, 1), 1.0)
        w_neg = np.where(ok, total / np.maximum(2 * neg, 1), 1.0)
    elif weighting == "moon":
        ratio = np.minimum(pos, neg) / np.maximum(np.maximum(pos, neg), 1)
        w_pos = np.where(ok & (pos > neg), ratio, 1.0)
        w_neg = np.where(ok & (neg > pos), ratio, 1.0)
    return w_pos, w_neg
