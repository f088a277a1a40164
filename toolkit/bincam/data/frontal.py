"""The paper's frontal-face filter on the five CelebA landmarks.

p1 = eye midpoint, p2 = mouth-corner midpoint, p3 = nose tip; ``d`` = distance of p3 from the line
p1–p2 and ``D = p2.y − p1.y``. A face is frontal when ``d / D ≤ threshold`` (0.1 in the paper).
The ratio is invariant to shifts and uniform scaling, so any landmark frame works.
"""

from __future__ import annotations

import numpy as np

FRONTAL_THRESHOLD = 0.1


def frontal_ratio(landmarks: np.ndarray) -> np.ndarray:
    """``d/D`` per face for landmarks ``[N, 10]`` in CelebA order (eyes, nose, mouth corners, x/y)."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    p1 = (lm[:, 0] + lm[:, 1]) / 2
    p2 = (lm[:, 3] + lm[:, 4]) / 2
    p3 = lm[:, 2]
    axis = p2 - p1
    rel = p3 - p1
    cross = axis[:, 0] * rel[:, 1] - axis[:, 1] * rel[:, 0]
    d = np.abs(cross) / np.maximum(np.linalg.norm(axis, axis=1), 1e-12)
    big_d = p2[:, 1] - p1[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(big_d > 0, d / big_d, np.inf)
    return ratio


def frontal_mask(landmarks: np.ndarray, threshold: float = FRONTAL_THRESHOLD) -> np.ndarray:
    """Boolean ``[N]``: which faces pass the frontal filter ``d/D ≤ threshold``."""
    return frontal_ratio(landmarks) <= threshold
