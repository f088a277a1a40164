"""Pictures of CAMs: JET overlays (pytorch-grad-cam's look) and per-image grid figures.

Overlay: ``c = 0.5·JET(h) + 0.5·image``, then ``c / max c`` (image and colour map in [0, 1]).
NumPy, Pillow and matplotlib only.
"""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

IMAGE_WEIGHT = 0.5


def overlay(image: np.ndarray, heatmap: np.ndarray, image_weight: float = IMAGE_WEIGHT) -> np.ndarray:
    """``uint8 [H, W, 3]`` overlay of a heatmap ``[H, W]`` in [0, 1] on an RGB ``uint8`` image."""
    heat = matplotlib.colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3]
    cam = (1 - image_weight) * heat + image_weight * (image.astype(np.float64) / 255.0)
    return np.uint8(255 * cam / cam.max())


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def grid_figure(image: np.ndarray, overlays: Sequence[np.ndarray], titles: Sequence[str],
                columns: int = 8) -> bytes:
    """PNG of the input image followed by one titled overlay per attribute."""
    n = len(overlays) + 1
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.85), squeeze=False)
    panels = [(image, "input")] + list(zip(overlays, titles))
    for ax in axes.flat:
        ax.axis("off")
    for ax, (picture, title) in zip(axes.flat, panels):
        ax.imshow(picture)
        ax.set_title(title, fontsize=6.5)
    fig.tight_layout(pad=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
