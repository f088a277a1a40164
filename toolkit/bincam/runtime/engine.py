"""The engine contract: what every engine (torch, ONNX Runtime, TensorRT) offers its callers.

    with open_engine("models/synth-small-balanced") as engine:
        engine.info                                   # ModelInfo: attributes, size, layer, layout
        out = engine.run(images)                      # logits, activations, gradients | channel_weights
        logits = engine.run_forward(images)           # [B, K_all], the forward pass alone
        result = engine.explain(images, "gradcam")    # Explanation (NumPy), any engine

Images are ``[B, 3, S, S]``, uint8 or float in [0, 1]. ``run`` returns NumPy arrays for the
selected attributes (default: all): ``logits [B,K]``, ``activations [B,C,h,w]`` and either
``gradients [B,K,C,h,w]`` (dense ``∂z/∂A``) or ``channel_weights [K,C]`` (an affine head:
``∂z_k/∂A = W[k,c]·1[A > 0]`` where ``info.mask_positive``), all float32 (an fp16 file's float16
outputs, ``export --half-outputs``, come widened). An explaining file
(``info.explain`` set) returns its own outputs instead: ``logits``, ``heatmaps``, ``energy``,
``raw_maps`` as far as it has them, and ``explain`` wraps them. Optional abilities are asked for with
``supports(name)``; today: ``"fused_epilogue"`` (``fused(images, method, mode, size, maps)``:
final maps and PE on the GPU) and ``"torch_cuda_memory"`` (the engine's device memory shows in
torch's CUDA allocator statistics). No torch here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bincam.attributes import resolve_attributes
from bincam.core.preprocess import model_input, preprocessing_of
from bincam.core.explanation import Explanation, explain_outputs, explaining_outputs
from bincam.core.methods import cam_method
from bincam.core.modes import check_mode
from bincam.core.model_info import ModelInfo
from bincam.errors import BincamError

Attributes = str | Sequence[str | int] | None


class Engine:
    """Base of every engine: subclasses set ``kind`` and ``info`` and implement ``_run`` and
    ``run_forward``; ``explain``, attribute selection, ``close`` and ``with`` come from here."""

    kind: str = ""
    capabilities: frozenset[str] = frozenset()
    info: ModelInfo

    @property
    def attributes(self) -> list[str]:
        return self.info.attributes

    def supports(self, capability: str) -> bool:
        """Whether this engine offers an optional ability (e.g. ``"fused_epilogue"``)."""
        return capability in self.capabilities

    def check_images(self, images) -> np.ndarray:
        """The validated batch (the engines' shared rules and messages) as the model's input
        tensor, by the preprocessing its file records (``core.preprocess``; for bincam's own
        nets the float32 batch itself)."""
        return model_input(images, preprocessing_of(self.info), self.info.image_size)

    def _indices(self, attributes: Attributes) -> tuple[list[str], list[int]]:
        names = resolve_attributes(attributes, self.info.attributes)
        return names, [self.info.attributes.index(n) for n in names]

    def run(self, images, attributes: Attributes = None) -> dict[str, np.ndarray]:
        """The engine's raw outputs for ``images`` (uint8 or float in [0, 1], ``[B, 3, S, S]``)
        and the selected attributes (names or indices; default all, ``K`` of them): ``logits
        [B, K_all]``, ``activations [B, C, h, w]`` and either ``gradients [B, K, C, h, w]``
        (dense: ``∂z_k/∂A``) or ``channel_weights [K, C]`` (factored: an affine head's
        ``W_eff/(h·w)``). An explaining file returns its own outputs instead."""
        _, indices = self._indices(attributes)
        return self._run(images, indices)

    def _run(self, images, indices: list[int]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def run_forward(self, images) -> np.ndarray:
        """Logits ``[B, K_all]`` of the forward pass alone (the baseline of every CAM ratio)."""
        raise NotImplementedError

    def explain(self, images, method: str = "gradcam", mode: str = "predicted",
                attributes: Attributes = None) -> Explanation:
        """Binary CAMs of the selected attributes (default: all, ``K`` of them) from one run of
        the engine. ``images``: uint8 or float in [0, 1], ``[B, 3, S, S]`` at the model's input
        size. Returns an ``Explanation`` (NumPy): ``logits [B, K]``, ``raw [B, K, h, w]``,
        ``heatmaps(size) → [B, K, size, size]`` in [0, 1], ``proportional_energy() → [B, K]``.
        ``mode``: ``predicted`` explains each attribute's predicted class (``sign(z)·∂z/∂A``).
        An explaining file's method and mode are fixed: asking for others is an error."""
        cam_method(method), check_mode(mode)
        names, indices = self._indices(attributes)
        spec = self.info.explain
        if spec and (method, mode) != (spec["method"], spec["mode"]):
            raise BincamError(f"this explaining file computes {spec['method']} in mode "
                              f"{spec['mode']}, not {method} in mode {mode}; export another one "
                              "or use the gradient file")
        out = self._run(images, indices)
        if spec:
            return explaining_outputs(self.info, out, names, indices)
        return explain_outputs(self.info, out, names, method, mode, np.shape(images)[-1])

    def fused(self, images, method: str = "gradcam", mode: str = "predicted",
              size: int | None = None, maps: str | None = "f32") -> dict[str, np.ndarray]:
        raise BincamError(f"the {self.kind} engine has no fused GPU epilogue; use "
                          "explain() (check supports('fused_epilogue') first)")

    def close(self) -> None:
        """Release what the engine holds (sessions, device buffers); idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


PER_ATTRIBUTE = ("logits", "gradients", "heatmaps", "energy", "raw_maps")  # axis 1 is K


def select(out: dict[str, np.ndarray], indices: list[int], total: int) -> dict[str, np.ndarray]:
    """The outputs of all ``total`` attributes narrowed to ``indices``."""
    if indices == list(range(total)):
        return out
    picked = dict(out)
    for name in PER_ATTRIBUTE:
        if name in out:
            picked[name] = out[name][:, indices]
    if "channel_weights" in out:
        picked["channel_weights"] = out["channel_weights"][indices]
    return picked
