"""A torch-free explanation: logits, raw maps, final maps and PE as NumPy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bincam.heatmap import attribute_energy, epilogue


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
