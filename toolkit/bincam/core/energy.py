"""Proportional energy (PE) of final CAM maps inside masks, exact from the ``h×w`` maps.

For the final map ``F`` (the epilogue: ReLU, min-max, bilinear resize ``U = R_y·x·R_xᵀ``, ReLU,
min-max) and a mask ``M``: ``PE = Σ_M F / Σ F`` (0 for an empty map).
Because steps 3–4 are linear up to the shift by ``m = min U`` and a scale that cancels,
``PE = (⟨x, R_yᵀ M R_x⟩ − m·|M|) / (⟨x, R_yᵀ 1 R_x⟩ − m·H·W)``, and ``m`` is attained on a few rows and
columns (the ends of each run of samples between the same two feature cells). ``MaskEnergy`` holds
those weights, so PE never needs the full-resolution map.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from bincam.core.epilogue import min_max, resize_matrix


def proportional_energy_full(heatmaps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Reference PE from final maps ``[..., K, H, W]`` and masks ``[K, H, W]`` (0 for empty maps)."""
    total = heatmaps.sum(axis=(-2, -1))
    inside = (heatmaps * masks).sum(axis=(-2, -1))
    return np.where(total > 0, inside / np.where(total > 0, total, 1), 0.0)


def _run_ends(r: np.ndarray) -> np.ndarray:
    """Output rows where the pair of source cells changes: a linear map's extremes lie there."""
    pair = np.argmax(r > 0, axis=1) * r.shape[1] + (r.shape[1] - 1 - np.argmax(r[:, ::-1] > 0,
                                                                               axis=1))
    change = np.flatnonzero(np.diff(pair) != 0)
    return np.unique(np.concatenate([[0, len(r) - 1], change, change + 1]))


class MaskEnergy:
    """Fast exact PE of the final ``H×W`` maps, computed from ``h×w`` normalised maps.

    ``masks`` is ``bool [K, H, W]`` (one mask per map of the K axis); feature size ``(h, w)``.
    """

    def __init__(self, masks: np.ndarray, feature_size: tuple[int, int]):
        masks = np.asarray(masks, dtype=np.float64)
        k, big_h, big_w = masks.shape
        h, w = feature_size
        self.ry, self.rx = resize_matrix(big_h, h), resize_matrix(big_w, w)
        self.inside = np.einsum("yi,kyx,xj->kij", self.ry, masks, self.rx, optimize=True)  # [K,h,w]
        self.total = np.outer(self.ry.sum(0), self.rx.sum(0))                            # [h, w]
        self.mask_area = masks.sum(axis=(1, 2))                                          # [K]
        self.area = big_h * big_w
        self.rows, self.cols = _run_ends(self.ry), _run_ends(self.rx)

    def normalised(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x, low, high)`` from weighted sums ``[..., K, h, w]``: the normalised ``h×w`` maps
        (steps 1–2) and the minimum and maximum of their upsampled maps (step 3; a bilinear map
        is linear along each run, so both extremes lie on the run ends)."""
        x = min_max(np.maximum(np.asarray(raw, dtype=np.float64), 0))
        h, w = x.shape[-2:]
        # the upsampled values on run-end rows × columns, as two GEMMs (stored transposed)
        cols = (x.reshape(-1, w) @ self.rx[self.cols].T).reshape(-1, h, len(self.cols))
        corners = (cols.transpose(0, 2, 1).reshape(-1, h) @ self.ry[self.rows].T).reshape(
            *x.shape[:-2], len(self.cols), len(self.rows))
        low = np.maximum(corners.min(axis=(-2, -1)), 0)  # min of the upsampled map (≥ 0)
        return x, low, corners.max(axis=(-2, -1))

    def energy(self, x: np.ndarray, low: np.ndarray, inside: np.ndarray | None = None,
               mask_area: np.ndarray | None = None) -> np.ndarray:
        """PE ``[..., K]`` of normalised maps ``x`` whose upsampled minimum is ``low``, for the
        projected masks ``inside`` (default: this object's own masks) of area ``mask_area``."""
        inside = self.inside if inside is None else inside
        mask_area = self.mask_area if mask_area is None else mask_area
        num = np.einsum("...ij,...ij->...", x, inside) - low * mask_area
        total = np.einsum("...kij,ij->...k", x, self.total) - low * self.area
        empty = total <= 1e-12 * self.area  # an empty map has PE 0; NaN stays NaN
        return np.where(empty, 0.0, num / np.where(empty, 1, total))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """PE ``[..., K]`` from weighted sums ``[..., K, h, w]`` (before any ReLU/normalisation)."""
        x, low, _ = self.normalised(raw)
        return self.energy(x, low)

    def corrected(self, raw: np.ndarray) -> np.ndarray:
        """PE scaled by ``1 − |M|/(H·W)``, the share of the frame outside the mask."""
        return self(raw) * (1 - self.mask_area / self.area)


@lru_cache(maxsize=32)
def attribute_energy(attributes: tuple[str, ...], size: int, feature_size: tuple[int, int]
                     ) -> MaskEnergy:
    """``MaskEnergy`` for the attributes' own masks at ``size``, built once per combination."""
    from bincam.attributes import attribute_masks

    return MaskEnergy(attribute_masks(list(attributes), size), feature_size)
