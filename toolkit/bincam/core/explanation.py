"""``Explanation``: what every engine's ``explain`` returns — logits, signs and raw maps of the
selected attributes as NumPy arrays, with the final maps and PE computed on demand.

    result.logits, result.raw            # [B, K], [B, K, h, w]
    result.heatmaps(224)                 # [B, K, 224, 224] final maps in [0, 1]
    result.proportional_energy()         # [B, K], each attribute's own mask

``explain_outputs`` turns an engine's outputs (``logits``, ``activations`` and ``gradients`` or
``channel_weights``) into one: ``G = s·∂z/∂A`` with ``s`` from the mode, then the CAM method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bincam.core.energy import attribute_energy
from bincam.core.epilogue import epilogue
from bincam.core.methods import factored_gradients, raw_maps
from bincam.core.modes import signs


@dataclass
class Explanation:
    """Logits and raw binary CAMs of a batch for the selected attributes."""

    attributes: list[str]
    logits: np.ndarray        # [B, K] raw scores of the selected attributes
    signs: np.ndarray         # [B, K] s ∈ {−1, 0, 1} applied to the gradients
    raw: np.ndarray           # [B, K, h, w] float64 weighted sums (before ReLU, min-max)
    method: str
    mode: str
    layer: str
    input_size: int
    factored: bool            # gradients came in the closed form of an affine head

    @property
    def probabilities(self) -> np.ndarray:
        """``σ(z)`` in float64."""
        return 1.0 / (1.0 + np.exp(-self.logits.astype(np.float64)))

    @property
    def predictions(self) -> np.ndarray:
        """1 where ``z ≥ 0`` (the attribute is predicted present)."""
        return (self.logits >= 0).astype(np.uint8)

    def heatmaps(self, size: int | None = None) -> np.ndarray:
        """Final maps ``[B, K, S, S]`` (float32, in [0, 1]; default size: the input size)."""
        return epilogue(self.raw, size or self.input_size, np.float32)

    def proportional_energy(self, size: int | None = None, corrected: bool = False) -> np.ndarray:
        """PE ``[B, K]`` of each final map inside its attribute's mask (fast exact form); NaN for
        an attribute with no mask (a foreign model's ``logit0``, say)."""
        from bincam.attributes import ATTRIBUTE_REGION

        known = [k for k, a in enumerate(self.attributes) if a in ATTRIBUTE_REGION]
        pe = np.full(self.logits.shape, np.nan)
        if known:
            energy = attribute_energy(tuple(self.attributes[k] for k in known),
                                      size or self.input_size, tuple(self.raw.shape[-2:]))
            raw = self.raw[:, known]
            pe[:, known] = energy.corrected(raw) if corrected else energy(raw)
        return pe


def raw_from_outputs(out: dict, method: str, mode: str, mask_positive: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(s [B,K], raw [B,K,h,w])`` from an engine's outputs: ``G = s·∂z/∂A`` with ``s`` from the
    mode (dense ``gradients``, or the factored ``channel_weights``), then the CAM method."""
    s = signs(out["logits"], mode).astype(np.float64)
    a = np.asarray(out["activations"], dtype=np.float64)
    if "gradients" in out:
        g = s[:, :, None, None, None] * out["gradients"].astype(np.float64)
    else:
        g = factored_gradients(a, s, out["channel_weights"], mask_positive)
    return s, raw_maps(method, a, g)


def explain_outputs(info, out: dict, attributes: list[str], method: str = "gradcam",
                    mode: str = "predicted", input_size: int | None = None) -> Explanation:
    """The ``Explanation`` of an engine's outputs for ``attributes`` (the attributes those outputs
    hold); ``info`` is the model's ``ModelInfo`` (layer, input size, ``mask_positive``)."""
    s, raw = raw_from_outputs(out, method, mode, info.mask_positive)
    return Explanation(list(attributes), out["logits"], s, raw, method, mode, info.target_layer,
                       int(input_size or info.image_size), "gradients" not in out)
