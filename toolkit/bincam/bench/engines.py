"""The engines a benchmark compares, behind one small interface.

Each engine takes decoded ``uint8 [B,S,S,3]`` images and offers three timed scopes:

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

from bincam.bench.inputs import to_batch
from bincam.errors import BincamError

ENGINES = ("torch", "ort", "trt")


class TorchEngine:
    """Eager PyTorch: ``bincam.explain`` (closed form where the head allows) on CPU or CUDA."""

    name = "torch"

    def __init__(self, model, method: str, attributes: list[str], device: str = "cpu"):
        self.model, self.method, self.attributes = model.to(device).eval(), method, attributes
        self.device = device

    def _tensor(self, x: np.ndarray):
        import torch

        return torch.from_numpy(x).to(self.device)

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def forward(self, x: np.ndarray) -> None:
        import torch

        with torch.no_grad():
            self.model(self._tensor(x))
        self.sync()

    def _explain(self, x: np.ndarray):
        from bincam.explanation import explain

        return explain(self.model, self._tensor(x), method=self.method, attributes=self.attributes)

    def cam(self, x: np.ndarray) -> None:
        self._explain(x)
        self.sync()

    def end_to_end(self, images: np.ndarray) -> None:
        e = self._explain(to_batch(images))
        e.heatmaps().cpu()
        e.proportional_energy()
        self.sync()

    def outputs(self, images: np.ndarray) -> dict:
        e = self._explain(to_batch(images))
        return {"logits": e.logits.cpu().numpy(), "raw": e.raw.cpu().numpy(),
                "maps": e.heatmaps().cpu().numpy(), "pe": e.proportional_energy()}


class OrtBenchEngine:
    """ONNX Runtime: the exported gradient graph, and its logits-only subgraph as the baseline
    (extracted from the same file with ``onnx.utils.Extractor``, run with the same options)."""

    name = "ort"

    def __init__(self, model_bytes: bytes, method: str, attributes: list[str], device: str = "cpu",
                 threads: int | None = None):
        import onnx
        import onnxruntime as ort

        from bincam.runtime.ort_engine import OrtEngine, session_options

        self.engine = OrtEngine(model_bytes, device=device, threads=threads)
        self.method, self.attributes = method, attributes
        proto = onnx.load_model_from_string(model_bytes)
        inputs = [i.name for i in proto.graph.input]
        forward = onnx.utils.Extractor(proto).extract_model(inputs, ["logits"])
        options = session_options(threads)
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                   self.engine.optimization_level)
        self.forward_session = ort.InferenceSession(forward.SerializeToString(), options,
                                                    providers=self.engine.session.get_providers())
        self.input_name = self.engine.info.input_name

    def forward(self, x: np.ndarray) -> None:
        self.forward_session.run(["logits"], {self.input_name: x})

    def cam(self, x: np.ndarray) -> None:
        self.engine.explain(x, method=self.method, attributes=self.attributes)

    def end_to_end(self, images: np.ndarray) -> None:
        e = self.engine.explain(to_batch(images), method=self.method, attributes=self.attributes)
        e.heatmaps()
        e.proportional_energy()

    def outputs(self, images: np.ndarray) -> dict:
        e = self.engine.explain(to_batch(images), method=self.method, attributes=self.attributes)
        return {"logits": e.logits, "raw": e.raw, "maps": e.heatmaps(), "pe": e.proportional_energy()}


class TrtBenchEngine(OrtBenchEngine):
    """TensorRT: the exported gradient graph's plan, and the plan of its logits-only subgraph
    as the baseline; CAMs from the engine's outputs as for ORT."""

    name = "trt"

    def __init__(self, model_bytes: bytes, method: str, attributes: list[str]):
        import onnx

        from bincam.runtime.trt_engine import TrtEngine

        self.engine = TrtEngine(model_bytes)
        self.method, self.attributes = method, attributes
        proto = onnx.load_model_from_string(model_bytes)
        forward = onnx.utils.Extractor(proto).extract_model([i.name for i in proto.graph.input],
                                                            ["logits"])
        forward.metadata_props.extend(proto.metadata_props)
        self.forward_engine = TrtEngine(forward.SerializeToString())

    def forward(self, x: np.ndarray) -> None:
        self.forward_engine.run(x)

    def end_to_end(self, images: np.ndarray) -> None:
        """Engine + fused CUDA epilogue (final maps + PE on the GPU, one copy back)."""
        if self.method in ("gradcam", "hirescam"):
            self.engine.fused(to_batch(images), method=self.method)
        else:
            super().end_to_end(images)


class ReferenceApproach:
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
        from bincam.attributes import attribute_masks
        from bincam.heatmap import proportional_energy_full

        return proportional_energy_full(maps, attribute_masks(self.attributes, maps.shape[-1]))

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


class TorchCamApproach(ReferenceApproach):
    """torch-cam (``torchcam``) the same way: one forward and one backward per attribute and
    image, the ``|z|`` target given as a per-sample callable; its low-resolution maps (ReLU,
    min-max) resized bilinearly to the input size, as its ``overlay_mask`` does."""

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
    "pytorch-grad-cam": (ReferenceApproach, "pytorch_grad_cam", "grad-cam"),
    "torch-cam": (TorchCamApproach, "torchcam", "torchcam")}


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


def check_engines(names: list[str]) -> list[str]:
    if "trt" in names:
        import importlib.util

        if importlib.util.find_spec("tensorrt") is None:
            raise BincamError("engine trt needs TensorRT: pip install 'bincam[trt]' on a machine "
                              "with an NVIDIA GPU")
    unknown = [n for n in names if n not in ENGINES]
    if unknown or not names:
        raise BincamError(f"unknown engine(s) {', '.join(unknown) or '(none)'}; choose from "
                          f"{', '.join(ENGINES)}")
    return names
