"""Binary modes: which class of a one-logit classifier a CAM explains.

Target score per (image, attribute): ``predicted`` → ``|z|`` (the paper's rule; explains the
predicted class, so the gradient is ``sign(z)·∂z/∂A``, and ``z = 0`` gives an empty map);
``positive`` → ``z`` (pytorch-grad-cam's ``ClassifierOutputTarget``); ``negative`` → ``−z``.
``id`` of each mode is its number in the fused CUDA kernel.
"""

from __future__ import annotations

import numpy as np

from bincam.errors import BincamError

MODES = {"predicted": 0, "positive": 1, "negative": 2}  # name → kernel id


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise BincamError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def signs(logits: np.ndarray, mode: str) -> np.ndarray:
    """The sign ``s ∈ {−1, 0, +1}`` per logit that turns ``∂z/∂A`` into the target's gradient."""
    check_mode(mode)
    logits = np.asarray(logits)
    if mode == "predicted":
        return np.sign(logits)
    return np.full(logits.shape, 1.0 if mode == "positive" else -1.0)
