"""Per-batch audit figures from an engine's outputs (NumPy only).

For every (image, attribute), with ``x`` the normalised ``h×w`` map of the predicted class:

- ``pe``: proportional energy of the final map inside the evidence region (fast exact form): the
  image's own region where the dataset gives one (a CSV dataset's boxes or mask images), else the
  attribute's fixed mask (CelebA regions; a CSV dataset's ``label_masks/``), else NaN;
- ``empty``: the final map is all zero (no positive evidence for the predicted class);
- ``evidence``: for an affine head, ``e = Σ_c W[k,c]·Σ_hw ReLU(A_c)`` so that ``z = e + b_eff``:
  the part of the logit that comes from the image (the rest is the bias);
- ``pe_cue``: PE against the synthetic generator's exact cue mask (NaN where no cue was drawn).

Average maps are accumulated exactly without full-size maps: the final map is
``F = (R_y x R_xᵀ − m) / (M + ε)`` with ``m``, ``M`` the minimum and range of the upsampled map, so
``mean F = R_y · mean(x / (M + ε)) · R_xᵀ − mean(m / (M + ε))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bincam.data.synth_render import cue_mask
from bincam.core.energy import MaskEnergy, attribute_energy
from bincam.core.epilogue import EPS
from bincam.core.explanation import raw_from_outputs

@dataclass
class Sums:
    """Exact running sums for the average final map per (predicted class, attribute)."""

    scaled: np.ndarray           # [2, K, h, w] Σ x / (M + ε)
    shift: np.ndarray            # [2, K]       Σ m / (M + ε)
    count: np.ndarray            # [2, K]       number of maps
    image: np.ndarray            # [3, S, S]    Σ input images (uint8 values), for the background

    @classmethod
    def zeros(cls, k: int, feature: tuple[int, int], size: int) -> "Sums":
        return cls(np.zeros((2, k, *feature)), np.zeros((2, k)), np.zeros((2, k), np.int64),
                   np.zeros((3, size, size)))

    def add(self, other: "Sums") -> None:
        for name in ("scaled", "shift", "count", "image"):
            getattr(self, name).__iadd__(getattr(other, name))

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f"sums_{n}": getattr(self, n) for n in ("scaled", "shift", "count", "image")}


class CueProjector:
    """One image's cue primitives → ``(R_yᵀ M R_x [K, h, w], |M| [K])`` per attribute (area 0 where
    no cue was drawn): all the cue PE needs, small enough to compute in the decoding threads."""

    def __init__(self, attributes: list[str], size: int, energy):
        self.attributes, self.size = attributes, size
        self.ry_t, self.rx = np.ascontiguousarray(energy.ry.T), energy.rx

    def __call__(self, cues: dict[str, list]) -> tuple[np.ndarray, np.ndarray]:
        inside = np.zeros((len(self.attributes), self.ry_t.shape[0], self.rx.shape[1]))
        area = np.zeros(len(self.attributes))
        for k, a in enumerate(self.attributes):
            if cues.get(a):
                m = cue_mask(cues[a], self.size).astype(np.float64)
                inside[k], area[k] = self.ry_t @ m @ self.rx, m.sum()
        return inside, area


class RegionProjector:
    """Image ``i`` of a CSV dataset → ``(R_yᵀ M R_x [K, h, w], |M| [K])`` of its own evidence
    regions (``data.csvset.CsvDataset.regions``; area 0 where it has none)."""

    def __init__(self, ds, attributes: list[str], size: int, energy):
        self.ds, self.attributes, self.size = ds, list(attributes), size
        self.ry_t, self.rx = np.ascontiguousarray(energy.ry.T), energy.rx

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        masks = self.ds.regions(i, self.size, self.attributes).astype(np.float64)
        inside = np.einsum("iy,kyx,xj->kij", self.ry_t, masks, self.rx, optimize=True)
        return inside, masks.sum(axis=(1, 2))


@dataclass
class BatchAnalyzer:
    """Turns engine outputs for a batch into per-image columns and average-map sums."""

    attributes: list[str]
    method: str
    size: int                    # the model's input size: masks and PE live in this frame
    factored: bool
    mask_positive: bool
    save_maps: bool = False
    masks: tuple[np.ndarray, np.ndarray] | None = None  # fixed (bool [K,S,S], known [K]); None:
    _energy: object = field(default=None, repr=False)   # the attributes' CelebA regions

    def energy(self, feature: tuple[int, int]):
        if self._energy is None:
            self._energy = attribute_energy(tuple(self.attributes), self.size, feature) \
                if self.masks is None else MaskEnergy(self.masks[0], feature)
        return self._energy

    def __call__(self, out: dict[str, np.ndarray], index: np.ndarray, labels: np.ndarray,
                 images: np.ndarray, cues: tuple[np.ndarray, np.ndarray] | None = None,
                 regions: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[dict[str, np.ndarray], Sums]:
        """Columns for images ``index``; ``cues`` / ``regions``: ``CueProjector`` /
        ``RegionProjector`` results stacked over the batch (``[B, K, h, w]``, ``[B, K]``), or
        None."""
        logits = np.asarray(out["logits"], dtype=np.float32)
        _, raw = raw_from_outputs(dict(out, logits=logits), self.method, "predicted",
                                  self.mask_positive)
        energy = self.energy(tuple(raw.shape[-2:]))
        x, low, high = energy.normalised(raw)
        pe = energy.energy(x, low)
        if self.masks is not None:
            pe[:, ~np.asarray(self.masks[1], bool)] = np.nan
        if regions is not None:
            inside, area = regions
            own = area > 0
            if own.any():
                pe[own] = energy.energy(x[own], low[own], inside[own], area[own])
        cols = {"index": np.asarray(index, np.int64), "labels": np.asarray(labels, np.uint8),
                "logits": logits, "pe": pe.astype(np.float32),
                "empty": x.max(axis=(-2, -1)) <= 0,
                "evidence": self._evidence(out, len(logits)).astype(np.float32),
                "pe_cue": np.full(logits.shape, np.nan, np.float32)}
        if cues is not None:
            inside, area = cues
            has = area > 0
            if has.any():
                cols["pe_cue"][has] = energy.energy(x[has], low[has], inside[has], area[has])
        if self.save_maps:
            cols["maps"] = raw.astype(np.float32)
        return cols, self._sums(x, low, high, logits >= 0, images)

    def _evidence(self, out: dict[str, np.ndarray], b: int) -> np.ndarray:
        """``e = W·Σ_hw ReLU(A)`` for an affine head (NaN otherwise)."""
        if not self.factored:
            return np.full((b, len(self.attributes)), np.nan)
        a = np.asarray(out["activations"], dtype=np.float64)
        pooled = (np.maximum(a, 0) if self.mask_positive else a).sum(axis=(2, 3))
        return pooled @ np.asarray(out["channel_weights"], dtype=np.float64).T

    def _sums(self, x, low, high, positive, images) -> Sums:
        k, feature = x.shape[1], x.shape[-2:]
        sums = Sums.zeros(k, feature, self.size)
        scale = 1.0 / (high - low + EPS)
        for c in (0, 1):
            sel = (positive == bool(c)).astype(np.float64)
            sums.scaled[c] = np.einsum("bk,bkij->kij", sel * scale, x)
            sums.shift[c] = (sel * low * scale).sum(0)
            sums.count[c] = sel.sum(0).astype(np.int64)
        sums.image = images.sum(axis=0, dtype=np.uint32).astype(np.float64)  # exact below 16 M
        return sums


def average_maps(sums: Sums, energy, size: int | None = None) -> np.ndarray:
    """Mean final maps ``[2, K, S, S]`` per predicted class (0: negative, 1: positive); NaN where
    no image was predicted in that class. ``energy``: the model's ``MaskEnergy``."""
    ry, rx = energy.ry, energy.rx
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums.scaled / sums.count[..., None, None]
        shift = sums.shift / sums.count
        maps = np.einsum("yi,ckij,xj->ckyx", ry, mean, rx, optimize=True) - shift[..., None, None]
    return maps
