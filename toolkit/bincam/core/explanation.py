"""``Explanation``: what every engine's ``explain`` returns — logits, signs and raw maps of the
selected attributes as NumPy arrays, with the final maps and PE computed on demand.

    result.logits, result.raw            # [B, K], [B, K, h, w]
    result.heatmaps(224)                 # [B, K, 224, 224] final maps in [0, 1]
    result.proportional_energy()         # [B, K], each attribute's own mask

``explain_outputs`` turns an engine's outputs (``logits``, ``activations`` and ``gradients`` or
``channel_weights``) into one: ``G = s·∂z/∂A`` with ``s`` from the mode, then the CAM method.
An explaining file (``bincam export --explain``) computes the final maps and PE itself:
``explaining_outputs`` wraps its ``heatmaps``, ``energy`` (and ``raw_maps`` if present) without
recomputing them; ``raw`` is None when the file has no raw maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bincam.core.energy import attribute_energy
from bincam.core.epilogue import epilogue, upsample
from bincam.core.methods import factored_gradients, raw_maps
from bincam.core.modes import signs
from bincam.errors import BincamError


@dataclass
class Explanation:
    """Logits and raw binary CAMs of a batch for the selected attributes."""

    attributes: list[str]
    logits: np.ndarray        # [B, K] raw scores of the selected attributes
    signs: np.ndarray         # [B, K] s ∈ {−1, 0, 1} applied to the gradients
    raw: np.ndarray | None    # [B, K, h, w] float64 weighted sums (before ReLU, min-max)
    method: str
    mode: str
    layer: str
    input_size: int
    factored: bool            # gradients came in the closed form of an affine head
    final: np.ndarray | None = None         # [B, K, S, S] float32 maps an explaining file made
    energy: np.ndarray | None = None        # [B, K] PE an explaining file made (NaN: no mask)
    mask_fraction: np.ndarray | None = None  # [K] |M|/S² of those masks (NaN: no mask)

    @property
    def probabilities(self) -> np.ndarray:
        """``σ(z)`` in float64."""
        return 1.0 / (1.0 + np.exp(-self.logits.astype(np.float64)))

    @property
    def predictions(self) -> np.ndarray:
        """1 where ``z ≥ 0`` (the attribute is predicted present)."""
        return (self.logits >= 0).astype(np.uint8)

    def heatmaps(self, size: int | None = None) -> np.ndarray:
        """Final maps ``[B, K, S, S]`` (float32, in [0, 1]; default size: the input size, or an
        explaining file's own map size). An explaining file's maps at another size are resized
        bilinearly (a picture resize) unless its raw maps are at hand."""
        if self.final is not None:
            if size in (None, self.final.shape[-1]):
                return self.final
            if self.raw is None:
                return np.clip(upsample(self.final, (size, size), np.float32), 0, 1)
        return epilogue(self.raw, size or self.input_size, np.float32)

    def proportional_energy(self, size: int | None = None, corrected: bool = False) -> np.ndarray:
        """PE ``[B, K]`` of each final map inside its attribute's mask (fast exact form); NaN for
        an attribute with no mask (a foreign model's ``logit0``, say). An explaining file's own PE
        (its masks, its map size) is returned as it is (NaN throughout if it has none)."""
        if self.energy is not None:
            if size not in (None, self.final.shape[-1]):
                raise BincamError(f"this explaining file computes PE at {self.final.shape[-1]} px "
                                  f"only, not {size}")
            return self.energy * (1 - self.mask_fraction) if corrected else self.energy
        if self.raw is None:  # an explaining file exported without masks
            return np.full(self.logits.shape, np.nan)
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


def explaining_outputs(info, out: dict, attributes: list[str], indices: list[int]
                       ) -> Explanation:
    """The ``Explanation`` of an explaining file's outputs (``logits``, ``heatmaps``, ``energy``
    and ``raw_maps`` as far as present) for ``attributes`` (the file's attributes at ``indices``);
    uint8 maps are scaled to [0, 1]."""
    spec = info.explain
    maps = out["heatmaps"].astype(np.float32)
    if spec["map_dtype"] == "uint8":
        maps /= 255.0
    fraction = np.array([np.nan if f is None else f for f in spec["mask_fraction"]])[indices]
    energy, raw = out.get("energy"), out.get("raw_maps")
    return Explanation(list(attributes), out["logits"], signs(out["logits"], spec["mode"]),
                       None if raw is None else raw.astype(np.float64), spec["method"],
                       spec["mode"], info.target_layer, int(info.image_size),
                       info.gradient_layout == "factored", maps,
                       None if energy is None else energy.astype(np.float64), fraction)
