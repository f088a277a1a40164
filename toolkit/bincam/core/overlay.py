"""Pictures of CAMs: JET overlays (pytorch-grad-cam's look), optional text labels on them, and
per-image grid figures.

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


def labelled(rgb: np.ndarray, text: str) -> np.ndarray:
    """``rgb`` with ``text`` written in white on a dark band along its top edge (Pillow)."""
    from PIL import ImageDraw, ImageFont

    picture = Image.fromarray(rgb)
    size = max(9, round(picture.height / 16))
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(picture, "RGBA")
    width = draw.textlength(text, font=font)
    while width > picture.width - 4 and size > 6:          # long names: a smaller font
        size -= 1
        font = ImageFont.load_default(size=size)
        width = draw.textlength(text, font=font)
    draw.rectangle((0, 0, picture.width, size + 4), fill=(0, 0, 0, 160))
    draw.text((2, 2), text, fill=(255, 255, 255, 255), font=font)
    return np.asarray(picture)


CELL, IMAGE, TITLE_BAND, HEADER = 1.6, 1.5, 0.42, 0.32     # inches


def grid_figure(image: np.ndarray, overlays: Sequence[np.ndarray], titles: Sequence[str],
                columns: int = 8, title: str | None = None) -> bytes:
    """PNG of the input image followed by one titled overlay per attribute; ``title``: a line
    above the grid (model, method, mode). Fixed cells: a band for the two-line panel titles
    above each image, so no row's titles reach into the row above."""
    n = len(overlays) + 1
    rows = (n + columns - 1) // columns
    top = HEADER if title else 0.1
    width, height = columns * CELL, rows * (IMAGE + TITLE_BAND) + top
    fig = plt.figure(figsize=(width, height))
    if title:
        fig.text(0.5, 1 - 0.15 / height, title, ha="center", va="top", fontsize=10)
    panels = [(image, "input")] + list(zip(overlays, titles))
    for i, (picture, name) in enumerate(panels):
        r, c = divmod(i, columns)
        bottom = height - top - (r + 1) * (IMAGE + TITLE_BAND)
        ax = fig.add_axes(((c * CELL + (CELL - IMAGE) / 2) / width, bottom / height,
                           IMAGE / width, IMAGE / height))
        ax.imshow(picture)
        ax.axis("off")
        ax.set_title(name, fontsize=7.5, pad=3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
