"""Fit rules: how an image of any size becomes the model's square ``S×S`` input (no torch).

The rule a model was trained with is recorded in its card (``input_fit``) and ONNX metadata
(``bincam.input_fit``), so ``cam``, ``analyze`` and ``serve`` bring new images into the same frame.
For an image of ``W×H`` pixels, a point ``(x, y)`` (pixel-edge coordinates) lands at
``((x + tx)·sx, (y + ty)·sy)`` in the frame:

- ``stretch``: resize to ``S×S``; ``t = 0``, ``sx = S/W``, ``sy = S/H`` (aspect not kept);
- ``crop``: the centred square of side ``m = min(W, H)`` (offset ``o = ⌊(W−m)/2⌋, ⌊(H−m)/2⌋``),
  resized; ``t = −o``, ``s = S/m`` (content outside the square is lost);
- ``pad``: the image centred on a black square of side ``M = max(W, H)`` (offset
  ``o = ⌊(M−W)/2⌋, ⌊(M−H)/2⌋``), resized; ``t = +o``, ``s = S/M`` (nothing lost);
- ``celeba``: CelebA's aligned frame (``data.celeba.to_frame``): 178×218 CelebA crops or square
  pre-aligned faces; the default of every face model.

Images resize bilinearly. Masks and boxes use one rule: a frame pixel is inside where it overlaps
an inside source pixel (or a box) with positive area (``fit_mask`` as a product of overlap
matrices, ``rasterize_boxes`` in closed form).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bincam.errors import BincamError

FITS = ("stretch", "crop", "pad")
"""The rules a CSV dataset may declare (``celeba`` is the face datasets' own)."""
ALL_FITS = FITS + ("celeba",)
_EDGE = 1e-9  # tolerance on frame coordinates: 3.0000000001 is pixel edge 3


@dataclass(frozen=True)
class FitTransform:
    """``(x, y) → ((x + tx)·sx, (y + ty)·sy)`` and the source square it resizes."""

    tx: float
    ty: float
    sx: float
    sy: float
    source: tuple[int, int, int, int]   # (x0, y0, x1, y1) of the source region (may exceed the image)

    def boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes ``[n, 4]`` ``(x0, y0, x1, y1)`` in image pixels → frame coordinates."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return np.stack([(b[:, 0] + self.tx) * self.sx, (b[:, 1] + self.ty) * self.sy,
                         (b[:, 2] + self.tx) * self.sx, (b[:, 3] + self.ty) * self.sy], axis=1)


def check_fit(fit: str, where: str = "fit") -> str:
    if fit not in ALL_FITS:
        raise BincamError(f"{where}: unknown fit rule {fit!r}; use one of {', '.join(FITS)}")
    return fit


def fit_transform(width: int, height: int, size: int, fit: str) -> FitTransform:
    """The affine map of ``fit`` from a ``width×height`` image to the ``size²`` frame."""
    check_fit(fit)
    if fit == "stretch":
        return FitTransform(0.0, 0.0, size / width, size / height, (0, 0, width, height))
    if fit == "crop":
        m = min(width, height)
        ox, oy = (width - m) // 2, (height - m) // 2
        return FitTransform(-ox, -oy, size / m, size / m, (ox, oy, ox + m, oy + m))
    if fit == "pad":
        m = max(width, height)
        ox, oy = (m - width) // 2, (m - height) // 2
        return FitTransform(ox, oy, size / m, size / m, (-ox, -oy, m - ox, m - oy))
    from bincam.attributes import FRAME
    from bincam.data.celeba import CELEBA_ALIGNED_SIZE, CELEBA_TO_FRAME_SHIFT

    if (width, height) == CELEBA_ALIGNED_SIZE:
        dx, dy = CELEBA_TO_FRAME_SHIFT
        return FitTransform(dx, dy, size / FRAME, size / FRAME, (-dx, -dy, FRAME - dx, FRAME - dy))
    if width != height:
        raise BincamError(f"image of size {width}×{height} is neither CelebA-aligned (178×218) "
                          "nor square pre-aligned")
    return FitTransform(0.0, 0.0, size / width, size / height, (0, 0, width, height))


def fit_image(img: Image.Image, size: int, fit: str) -> Image.Image:
    """``img`` (any mode) in the ``size²`` frame by ``fit`` (bilinear; black where padded)."""
    if fit == "celeba":
        from bincam.data.celeba import to_frame

        return to_frame(img, size)
    t = fit_transform(img.width, img.height, size, fit)
    if fit == "pad":
        x0, y0, x1, y1 = t.source
        canvas = Image.new(img.mode, (x1 - x0, y1 - y0), 0)
        canvas.paste(img, (-x0, -y0))
        img = canvas
        box = None
    else:
        box = t.source
    if img.size == (size, size) and box in (None, (0, 0, size, size)):
        return img
    return img.resize((size, size), Image.Resampling.BILINEAR, box=box)


def fit_mask(mask: np.ndarray, size: int, fit: str) -> np.ndarray:
    """A boolean image-sized mask ``[H, W]`` in the frame: a frame pixel is inside where it
    overlaps an inside source pixel with positive area, ``(O_y · M · O_xᵀ) > 0`` with the 0/1
    overlap matrices ``O`` of frame rows × source rows (and columns)."""
    m = np.asarray(mask, dtype=bool)
    t = fit_transform(m.shape[1], m.shape[0], size, fit)
    oy, ox = _overlap(m.shape[0], t.ty, t.sy, size), _overlap(m.shape[1], t.tx, t.sx, size)
    return (oy @ m.astype(np.float64) @ ox.T) > 0


def _overlap(n: int, shift: float, scale: float, size: int) -> np.ndarray:
    """``[size, n]``: 1 where frame cell ``r`` overlaps source cell ``j``, i.e. ``[r, r+1)`` meets
    ``[(j + shift)·scale, (j + 1 + shift)·scale)`` with positive length."""
    j = np.arange(n)
    lo, hi = (j + shift) * scale, (j + 1 + shift) * scale
    r = np.arange(size)[:, None]
    return ((np.minimum(hi[None], r + 1) - np.maximum(lo[None], r)) > _EDGE).astype(np.float64)


def rasterize_boxes(frame_boxes: np.ndarray, size: int) -> np.ndarray:
    """Boolean ``[size, size]``: the union of boxes given in frame coordinates; a pixel
    ``[c, c+1) × [r, r+1)`` is inside where it overlaps a box with positive area. Parts outside
    the frame are clipped; an empty box (``x0 = x1`` or ``y0 = y1``) covers nothing."""
    out = np.zeros((size, size), dtype=bool)
    for x0, y0, x1, y1 in np.asarray(frame_boxes, dtype=np.float64).reshape(-1, 4):
        if x1 - x0 <= _EDGE or y1 - y0 <= _EDGE:
            continue
        c0, c1 = max(math.floor(x0 + _EDGE), 0), min(math.ceil(x1 - _EDGE), size)
        r0, r1 = max(math.floor(y0 + _EDGE), 0), min(math.ceil(y1 - _EDGE), size)
        if c1 > c0 and r1 > r0:
            out[r0:r1, c0:c1] = True
    return out


def open_rgb(path: Path | str) -> Image.Image:
    """Decode an image file with Pillow as RGB; one clear error for a missing, undecodable or
    oversized file (grey and palette images are converted)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")  # corrupt EXIF…
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.convert("RGB")
    except FileNotFoundError:
        raise BincamError(f"image {path} is listed but missing") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise BincamError(f"image {path} has more than {Image.MAX_IMAGE_PIXELS:,} pixels; "
                          "refused as a possible decompression bomb") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BincamError(f"image {path} does not decode ({exc.__class__.__name__}); "
                          "replace or remove it") from None


def load_fitted(path: Path | str, size: int, fit: str = "celeba") -> np.ndarray:
    """One image file as ``uint8 [S, S, 3]`` RGB in the frame of ``fit``."""
    if fit == "celeba":
        from bincam.data.celeba import load_aligned

        return load_aligned(Path(path), size)
    return np.array(fit_image(open_rgb(path), size, check_fit(fit)))
