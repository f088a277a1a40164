"""The model's own preprocessing: how decoded images become its input tensor (no torch).

Every engine takes the same batches (``[B, 3, S, S]`` RGB, uint8 or float in [0, 1], as the
readers, ``data.fit``, the serving handler and the web page produce them) and turns them into
what the file was trained on with ``model_input``, by the ``Preprocessing`` its metadata records
(``bincam export --pixel-range/--mean/--std/--channel-order/--layout`` or ``--preprocess``).
For a pixel ``p`` in [0, 1] (``u/255`` for uint8 ``u``) and the model's channel ``c``:

    x_c = (lo + (hi − lo)·p_{order(c)} − mean_c) / std_c

with ``(lo, hi)`` the pixel range (``[0, 1]`` or ``[0, 255]``), ``order`` RGB or BGR (``mean``
and ``std`` are given in the model's channel order), then laid out NCHW or NHWC. The default
(``[0, 1]``, mean 0, std 1, RGB, NCHW) is the identity: bincam's own nets take exactly that.
A ``raw_pixels`` file (``export --raw-pixels``) does all this inside its graph; it is fed the
uint8 ``[B, S, S, 3]`` RGB pixels themselves (a float batch is rounded to ``⌊255·p + ½⌋``).
``examples/web/app.js`` (``modelInput``) applies the same rule in the browser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bincam.core.checks import check_batch
from bincam.errors import BincamError

CHANNEL_ORDERS = ("rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")
PIXEL_RANGES = {"1": (0.0, 1.0), "0-1": (0.0, 1.0), "255": (0.0, 255.0), "0-255": (0.0, 255.0)}


@dataclass(frozen=True)
class Preprocessing:
    """What the model's input tensor is, relative to RGB pixels in [0, 1]."""

    pixel_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    channel_order: str = "rgb"
    layout: str = "nchw"
    raw_pixels: bool = False

    @property
    def is_identity(self) -> bool:
        """Float ``[B, 3, S, S]`` RGB in [0, 1] as the engines take it: nothing to do."""
        return self == Preprocessing()

    def check(self, channels: int = 3) -> "Preprocessing":
        """One clear error for a spec that cannot be right (before anything is written)."""
        if self.channel_order not in CHANNEL_ORDERS:
            raise BincamError(f"--channel-order must be one of {', '.join(CHANNEL_ORDERS)}, got "
                              f"{self.channel_order!r}")
        if self.layout not in LAYOUTS:
            raise BincamError(f"--layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        lo, hi = self.pixel_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise BincamError(f"--pixel-range {list(self.pixel_range)} is not an interval")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != channels:
                raise BincamError(f"--{name} needs {channels} values (one per input channel, in "
                                  f"the model's channel order), got {len(values)}: "
                                  f"{','.join(f'{v:g}' for v in values)}")
            if not all(math.isfinite(v) for v in values):
                raise BincamError(f"--{name} values must be finite numbers, got "
                                  f"{','.join(str(v) for v in values)}")
        if not all(s > 0 for s in self.std):
            raise BincamError(f"--std values must be positive (each input channel is divided "
                              f"by its std), got {','.join(f'{v:g}' for v in self.std)}")
        return self

    def metadata_pixel_format(self) -> tuple[str, str]:
        """The ONNX image metadata ``Image.BitmapPixelFormat`` and ``Image.NominalPixelRange``
        of the file's input."""
        if self.raw_pixels:
            return "Rgb8", "NominalRange_0_255"
        fmt = "Bgr8" if self.channel_order == "bgr" else "Rgb8"
        return fmt, ("NominalRange_0_255" if self.pixel_range == (0.0, 255.0)
                     else "Normalized_0_1")


def preprocessing_of(info) -> Preprocessing:
    """The ``Preprocessing`` a ``ModelInfo`` records."""
    return Preprocessing(tuple(float(v) for v in info.pixel_range),
                         tuple(float(v) for v in info.mean), tuple(float(v) for v in info.std),
                         info.channel_order, info.layout, bool(info.raw_pixels))


def model_input(images, prep: Preprocessing, size: int | None = None) -> np.ndarray:
    """The model's input tensor for ``images`` ``[B, 3, S, S]`` RGB (uint8, or float in [0, 1];
    validated here with ``core.checks.check_batch``): float32 by the formula above, or uint8
    ``[B, S, S, 3]`` for a raw-pixels file. Computed in float64 (uint8 pixels of a 0–255 model
    arrive exact); the default spec returns the validated float32 batch as it is."""
    x = check_batch(images, size)
    raw = np.asarray(images)
    if prep.raw_pixels:
        pixels = raw if raw.dtype == np.uint8 else np.floor(255.0 * x + 0.5).astype(np.uint8)
        return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
    if prep.is_identity:
        return x
    p = raw.astype(np.float64) / 255.0 if raw.dtype == np.uint8 else x.astype(np.float64)
    if prep.channel_order == "bgr":
        p = p[:, ::-1]
    lo, hi = prep.pixel_range
    mean = np.asarray(prep.mean, np.float64)[None, :, None, None]
    std = np.asarray(prep.std, np.float64)[None, :, None, None]
    out = ((lo + (hi - lo) * p) - mean) / std
    if prep.layout == "nhwc":
        out = out.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(out, dtype=np.float32)


def pixels_input(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """``model_input`` of decoded images as the readers give them, uint8 ``[B, S, S, 3]`` RGB."""
    return model_input(np.asarray(pixels).transpose(0, 3, 1, 2), prep)


def parse_values(text: str, option: str) -> tuple[float, ...]:
    """``"0.485,0.456,0.406"`` → floats; one clear error naming ``option`` otherwise."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise BincamError(f"{option} takes comma-separated numbers (e.g. "
                          f"{option} 0.485,0.456,0.406), got {text!r}") from None
    return values


def parse_pixel_range(text: str) -> tuple[float, float]:
    """``--pixel-range``: ``1`` / ``0-1`` or ``255`` / ``0-255``."""
    if text not in PIXEL_RANGES:
        raise BincamError(f"--pixel-range must be 1 (0-1) or 255 (0-255), got {text!r}")
    return PIXEL_RANGES[text]
