"""Binary modes: which class of a one-logit classifier a CAM explains.

Target score per (image, attribute): ``predicted`` → ``|z|`` (the paper's rule; explains the
predicted class, so the gradient is ``sign(z)·∂z/∂A``, and ``z = 0`` gives an empty map);
``positive`` → ``z`` (pytorch-grad-cam's ``ClassifierOutputTarget``); ``negative`` → ``−z``.
"""

from __future__ import annotations

import torch

from bincam.errors import BincamError
from bincam.runtime.cam_np import MODES  # one definition, in the torch-free runtime


def signs(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """The sign ``s ∈ {−1, 0, +1}`` per logit that turns ``∂z/∂A`` into the target's gradient."""
    if mode == "predicted":
        return torch.sign(logits)
    if mode == "positive":
        return torch.ones_like(logits)
    if mode == "negative":
        return -torch.ones_like(logits)
    raise BincamError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
