"""What a benchmark times: every engine through the contract, and the baseline tools.

Each takes decoded ``uint8 [B,S,S,3]`` images; an engine offers three timed scopes:

- ``forward(x)``: the engine's forward pass only (logits), on a preprocessed float batch — the
  baseline that makes the CAM overhead a ratio;
- ``cam(x)``: logits and raw maps of all selected attributes (engine scope);
- ``end_to_end(images)``: preprocessing + ``cam`` + the epilogue to final maps + PE;

and ``outputs(images)``: NumPy ``logits [B,K]``, ``raw [B,K,h,w]`` (or None), ``maps [B,K,H,W]``,
``pe [B,K]`` for the fidelity comparison.
"""

from __future__ import annotations

import copy

import numpy as np

from bincam.data.batches import to_batch
from bincam.errors import BincamError

class TimedEngine:
    """An engine of the contract (``bincam.runtime``) with a benchmark's three timed scopes; the
    end-to-end scope uses the fused GPU epilogue where the engine offers one."""

    def __init__(self, engine, method: str, attributes: list[str]):
        self.engine, self.method, self.attributes = engine, method, attributes
        self.name = engine.kind

    def forward(self, x: np.ndarray) -> None:
        self.engine.run_forward(x)

    def _explain(self, x: np.ndarray):
        return self.engine.explain(x, method=self.method, attributes=self.attributes)

    def cam(self, x: np.ndarray) -> None:
        self._explain(x)

    def end_to_end(self, images: np.ndarray) -> None:
        x = to_batch(images)
        if self.engine.supports("fused_epilogue"):
            self.engine.fused(x, method=self.method, maps="f32")
            return
        e = self._explain(x)
        e.heatmaps()
        e.proportional_energy()

    def outputs(self, images: np.ndarray) -> dict:
        e = self._explain(to_batch(images))
        return {"logits": e.logits, "raw": e.raw, "maps": e.heatmaps(), "pe": e.proportional_energy()}

    def close(self) -> None:
        self.engine.close()


class PytorchGradCamBaseline:
    """What the paper's code does: pytorch-grad-cam with a ``|z|`` target, one call per attribute,
    one image per call; final maps at the input size. Timed per image, end to end only."""

    name = "pytorch-grad-cam"
    CLASSES = {"gradcam": "GradCAM", "hirescam": "HiResCAM", "xgradcam": "XGradCAM",
               "gradcam++": "GradCAMPlusPlus", "layercam": "LayerCAM",
               "gradcam-elementwise": "GradCAMElementWise"}

    def __init__(self, model, method: str, attributes: list[str]):
        from bincam.nets import cam_module

        if method not in self.CLASSES:
            raise BincamError(f"{self.name} has no {method}; drop it from --baselines")
        # its own CPU copy: the torch engine may hold the shared model on the GPU
        self.model = copy.deepcopy(model).cpu().eval()
        self.method, self.layer = method, cam_module(self.model)
        known = model.card.attributes if getattr(model, "card", None) else None
        self.indices = [known.index(a) for a in attributes] if known else list(range(len(attributes)))
        self.attributes = attributes

    def _maps(self, x) -> np.ndarray:
        import pytorch_grad_cam

        from bincam.cam.targets import BinaryLogitTarget

        out = np.empty((len(x), len(self.indices), *x.shape[-2:]), np.float32)
        with getattr(pytorch_grad_cam, self.CLASSES[self.method])(
                model=self.model, target_layers=[self.layer]) as cam:
            for b in range(len(x)):
                for j, k in enumerate(self.indices):
                    out[b, j] = cam(x[b:b + 1], targets=[BinaryLogitTarget(k)])[0]
        return out

    def _pe(self, maps: np.ndarray) -> np.ndarray:
        from bincam.attributes import known_masks
        from bincam.core.energy import proportional_energy_full

        masks, known = known_masks(self.attributes, maps.shape[-1])
        return np.where(known, proportional_energy_full(maps, masks), np.nan)  # NaN: no mask

    def end_to_end(self, images: np.ndarray) -> None:
        import torch

        self._pe(self._maps(torch.from_numpy(to_batch(images))))

    def outputs(self, images: np.ndarray) -> dict:
        import torch

        x = torch.from_numpy(to_batch(images))
        maps = self._maps(x)
        with torch.no_grad():
            logits = self.model(x)[:, self.indices].numpy()
        return {"logits": logits, "raw": None, "maps": maps, "pe": self._pe(maps)}


class TorchCamBaseline(PytorchGradCamBaseline):
    """torch-cam (``torchcam``) the same way: one forward and one backward per attribute and
    image, the ``|z|`` target given as a per-sample callable; its low-resolution maps (ReLU,
    min-max) resized bilinearly to the input size, as its ``overlay_mask`` does. torch-cam
    normalises once, before the resize (no second min-max as in the reference epilogue), so its
    final maps are an affine rescaling of the reference's (README: Results, engines)."""

    name = "torch-cam"
    CLASSES = {"gradcam": "GradCAM", "xgradcam": "XGradCAM", "gradcam++": "GradCAMpp",
               "layercam": "LayerCAM"}

    def _maps(self, x) -> np.ndarray:
        import torch
        import torchcam.methods
        from torch.nn import functional as F

        out = np.empty((len(x), len(self.indices), *x.shape[-2:]), np.float32)
        extractor = getattr(torchcam.methods, self.CLASSES[self.method])(
            self.model, self.layer, input_shape=tuple(x.shape[1:]))
        try:
            for b in range(len(x)):
                for j, k in enumerate(self.indices):
                    scores = self.model(x[b:b + 1])
                    cam = extractor(scores=scores, targets=lambda z, k=k: z[k].abs())[0]
                    with torch.no_grad():
                        out[b, j] = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear",
                                                  align_corners=False)[0, 0].numpy()
        finally:
            extractor.remove_hooks()
        return out


BASELINES = {  # name: (class, module, pip package)
    "pytorch-grad-cam": (PytorchGradCamBaseline, "pytorch_grad_cam", "grad-cam"),
    "torch-cam": (TorchCamBaseline, "torchcam", "torchcam")}


def available_baselines(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The baselines that can run here, and why the others cannot."""
    import importlib.util

    usable, skipped = [], {}
    for name in names:
        if name not in BASELINES:
            raise BincamError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
        if importlib.util.find_spec(BASELINES[name][1]) is None:
            skipped[name] = f"not installed (pip install {BASELINES[name][2]})"
        else:
            usable.append(name)
    return usable, skipped
