"""Validation of image batches, shared by every engine: the rules and their messages live here once.

``check_batch`` validates a NumPy batch; the torch engine computes the same facts on its tensors
and calls the rule functions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bincam.errors import BincamError


def check_shape(shape: Sequence[int], size: int | None) -> None:
    """A batch must be ``[B, 3, S, S]`` with ``S`` the model's input size (when it has one)."""
    shape = tuple(shape)
    if len(shape) == 3:
        raise BincamError(f"images must be a batch [B, 3, S, S]; got one image {list(shape)} — "
                          "add a batch axis")
    if len(shape) != 4 or shape[1] != 3:
        raise BincamError(f"images must have shape [B, 3, S, S]; got {list(shape)}")
    if shape[2] != shape[3]:
        raise BincamError(f"images must be square aligned faces; got {shape[2]}×{shape[3]}")
    if size is not None and shape[2] != size:
        raise BincamError(f"this model takes {size}×{size} images; got {shape[2]}×{shape[3]} — "
                          "resize them first")


def check_float_values(nonfinite_images: list[int], lo: float, hi: float) -> None:
    """Float pixels must be finite (the message names the images) and lie in [0, 1]."""
    if nonfinite_images:
        raise BincamError(f"images {nonfinite_images} contain NaN or Inf")
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise BincamError(f"float images must lie in [0, 1]; got values in [{lo:.3g}, {hi:.3g}] "
                          "(divide 0–255 images by 255)")


def wrong_dtype(dtype) -> BincamError:
    return BincamError(f"images must be uint8 or float; got {dtype}")


def check_batch(images, size: int | None) -> np.ndarray:
    """Validate ``[B, 3, S, S]`` uint8 or float in [0, 1]; return float32 (NaN/Inf: which images)."""
    x = np.asarray(images)
    check_shape(x.shape, size)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if x.dtype.kind != "f":
        raise wrong_dtype(x.dtype)
    finite = np.isfinite(x).reshape(len(x), -1).all(1)
    check_float_values(np.flatnonzero(~finite).tolist(), float(x.min()), float(x.max()))
    return x.astype(np.float32)


def check_logits(logits, images: Sequence[str]) -> None:
    """Logits must be finite: NaN or Inf means broken weights or inputs, never a class (a NaN
    logit compares false with 0 and would read as "negative"). The message names the images."""
    z = np.asarray(logits)
    if z.size == 0:
        return
    bad = np.flatnonzero(~np.isfinite(z).reshape(len(z), -1).all(1))
    if len(bad):
        named = ", ".join(str(images[i]) for i in bad[:3]) + (", …" if len(bad) > 3 else "")
        raise BincamError(f"the model's logits are NaN or Inf for {len(bad)} of {len(z)} "
                          f"image(s) ({named}): its weights or these inputs are broken, and no "
                          "class can be read from a NaN; fix the model or remove these inputs")
