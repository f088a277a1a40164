"""A torch-free explanation: logits, raw maps, final maps and PE as NumPy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bincam.attributes import resolve_attributes
from bincam.heatmap import attribute_energy, epilogue
from bincam.runtime.cam_np import raw_maps, signs


@dataclass
class NumpyExplanation:
    attributes: list[str]
    logits: np.ndarray        # [B, K]
    signs: np.ndarray         # [B, K]
    raw: np.ndarray           # [B, K, h, w] float64 weighted sums
    method: str
    mode: str
    input_size: int

    @property
    def probabilities(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits.astype(np.float64)))

    @property
    def predictions(self) -> np.ndarray:
        return (self.logits >= 0).astype(np.uint8)

    def heatmaps(self, size: int | None = None) -> np.ndarray:
        return epilogue(self.raw, size or self.input_size, np.float32)

    def proportional_energy(self, size: int | None = None, corrected: bool = False) -> np.ndarray:
        energy = attribute_energy(tuple(self.attributes), size or self.input_size,
                                  tuple(self.raw.shape[-2:]))
        return energy.corrected(self.raw) if corrected else energy(self.raw)


def explain_outputs(info, out: dict, input_size: int, method: str = "gradcam",
                    mode: str = "predicted", attributes=None) -> NumpyExplanation:
    """Binary CAMs from an engine's outputs (``logits``, ``activations`` and ``gradients`` or
    ``channel_weights``), as described by the model's metadata ``info``."""
    names = resolve_attributes(attributes, info.attributes)
    idx = [info.attributes.index(n) for n in names]
    logits = out["logits"][:, idx]
    s = signs(logits, mode)
    if "gradients" in out:
        raw = raw_maps(method, out["activations"], s, grads=out["gradients"][:, idx])
    else:
        raw = raw_maps(method, out["activations"], s, weight=out["channel_weights"][idx],
                       mask_positive=info.mask_positive)
    return NumpyExplanation(names, logits, s, raw, method, mode, input_size)
