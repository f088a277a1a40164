"""Torch-free checks of an exported gradient graph, evaluated by ONNX Runtime on the file itself.

The slice from the CAM tensor ``A`` to ``logits`` and ``gradients`` is cut out of the file
(``onnx.utils.Extractor``) so ``A`` can be set freely:

- **finite differences** (the formulas): at generic points ``A' = A + noise`` (no exact zeros or
  ties), ``⟨G(A'), V⟩`` must equal ``(z(A' + εV) − z(A' − εV)) / 2ε`` for random directions ``V``,
  the logits computed in float64 where ONNX Runtime has double kernels for the slice's ops;
- **ties** (the conventions): at the engine's own ``A`` — post-ReLU zeros of random images (a
  refusal), a uniform image (a warning only: see ``WARN_ONLY``) — ``G(A)`` must equal
  ``G(A + δR)`` where the ramp ``R`` decreases with the flat index, so every tie is broken
  toward its first element, as PyTorch and ONNX Runtime do
  (a MaxPool rule that routes a tied window's gradient to all its maxima fails here), at the
  better of two steps ``δ`` (kinks crossed downstream shrink with the step, a convention does
  not);
- **factored heads**: ``Δz = (W·h·w) · Δ mean_hw(ReLU?(A))`` between two generic points ``A``
  set freely in the file's ``A → logits`` slice (not two images: a net whose features barely
  depend on its input, as random weights with poor BatchNorm statistics give, has ``Δz`` at the
  float32 rounding of ``z``, and the identity could not be seen).
"""

from __future__ import annotations

import numpy as np
import onnx

FD64_LIMIT, FD32_LIMIT, TIE_LIMIT, FACTORED_LIMIT = 1e-3, 1e-1, 1e-1, 1e-4


def _cam_tensor(model: onnx.ModelProto, info) -> str:
    """The tensor the gradients are taken at: the metadata's layer if the graph has it, else
    bincam's own ``activations`` output."""
    produced = {o for n in model.graph.node for o in n.output}
    return info.target_layer if info.target_layer in produced else "activations"


class Slice:
    """The ``A → (logits, ∂z/∂A)`` slice of the file (the gradient shaped like ``A``: before a
    token layout's reshape), and the ``images → A`` part that gives ``A``."""

    def __init__(self, model: onnx.ModelProto, info):
        import onnxruntime as ort

        self.name = _cam_tensor(model, info)
        produced = {o for n in model.graph.node for o in n.output}
        self.grad = "gradients_tokens" if "gradients_tokens" in produced else \
            "gradients" if "gradients" in produced else None  # None: a factored file
        self.score = explained_score(model)
        if self.score != "logits":  # an inner tensor: the Extractor needs its type
            model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        self.extractor = extractor = onnx.utils.Extractor(model)  # shape inference, once
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        self.input, self.images = info.input_name, None
        part = self.cut([self.score] + ([self.grad] if self.grad else []))
        self.needs_images = self.input in {i.name for i in part.graph.input}
        self.session = ort.InferenceSession(part.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        head = extractor.extract_model([self.input], [self.name])
        self.head = ort.InferenceSession(head.SerializeToString(), options,
                                         providers=["CPUExecutionProvider"])

    def activations(self, images: np.ndarray) -> np.ndarray:
        """``A`` of ``images``, which stay fixed for the other paths to the logits."""
        self.images = images
        return self.head.run([self.name], {self.input: images})[0]

    def feeds(self, a: np.ndarray) -> dict:
        feeds = {self.name: a.astype(np.float32)}
        return feeds | ({self.input: self.images} if self.needs_images else {})

    def cut(self, outputs: list[str]) -> onnx.ModelProto:
        """The part of the file from ``A`` to ``outputs``; where other paths reach the outputs too
        (a residual around ``A``), from ``A`` and the images, which then stay fixed."""
        part = self.extractor.extract_model([self.name], outputs)
        known = {i.name for i in part.graph.input} | {t.name for t in part.graph.initializer} | \
            {o for n in part.graph.node for o in n.output}
        if all(i in known for n in part.graph.node for i in n.input if i):
            return part
        return self.extractor.extract_model([self.name, self.input], outputs)

    def logits(self, a: np.ndarray) -> np.ndarray:
        return self.session.run([self.score], self.feeds(a))[0]

    def gradients(self, a: np.ndarray) -> np.ndarray:
        return self.session.run([self.grad], self.feeds(a))[0]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def float64_slice(cut: Slice):
    """The ``A → logits`` slice computed in float64 by ONNX Runtime, or None where one of its ops
    has no double kernel (ONNX Runtime's CPU Conv, say)."""
    import onnxruntime as ort
    from onnx import TensorProto, numpy_helper

    part, images = cut.cut([cut.score]), cut.input
    graph = part.graph
    opset = next((o.version for o in part.opset_import if o.domain in ("", "ai.onnx")), 18)
    for tensor in list(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(
                np.float64), tensor.name))
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT and value.name != images:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    del graph.value_info[:]
    for node in graph.node:
        if node.op_type == "GlobalAveragePool":  # no double kernel; the same mean over h, w
            node.op_type = "ReduceMean"
            node.attribute.extend([onnx.helper.make_attribute("keepdims", 1)])
            if opset >= 18:
                node.input.append(_axes(graph))
            else:
                node.attribute.extend([onnx.helper.make_attribute("axes", [2, 3])])
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(
                    np.float64)))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
    try:
        return ort.InferenceSession(part.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - a missing double kernel: fall back to float32
        return None


def _axes(graph) -> str:
    """A constant ``[2, 3]`` (the spatial axes) in ``graph``, added once."""
    from onnx import numpy_helper

    if not any(t.name == "selfcheck/hw" for t in graph.initializer):
        graph.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64),
                                                         "selfcheck/hw"))
    return "selfcheck/hw"


def finite_differences(part: Slice, a: np.ndarray, rng, exact=None,
                       directions: int = 3) -> float:
    """Relative L2 of ``⟨G, V⟩ − FD`` over images, logits and directions at a generic point.
    With ``exact`` (the float64 slice) one tiny step crosses no kink; else the best of four
    float32 steps 1e-2…1e-5 (kinks add an error ∝ ε, rounding one ∝ 1/ε; a wrong rule is off at
    all; LeViT's random-weight attention crosses kinks down to 1e-4: 0.87 there)."""
    scale = float(np.sqrt(np.mean(a.astype(np.float64) ** 2))) or 1.0
    point = (a + rng.standard_normal(a.shape) * 0.05 * scale).astype(np.float32)
    grads = part.gradients(point).astype(np.float64)  # [B, K, *A]
    vs = [v / np.sqrt(np.mean(v ** 2)) for v in (rng.standard_normal(a.shape)
                                                   for _ in range(directions))]
    analytic = np.stack([np.einsum("bkn,bn->bk", grads.reshape(*grads.shape[:2], -1),
                                   v.reshape(len(v), -1)) for v in vs])

    def logits(x: np.ndarray) -> np.ndarray:
        if exact is not None:
            return exact.run([part.score], dict(part.feeds(x), **{part.name: x}))[0]
        return part.logits(x).astype(np.float64)

    errors = []
    for step in ((1e-7,) if exact is not None else (1e-2, 1e-3, 1e-4, 1e-5)):
        eps = step * scale
        numeric = [(logits(point + eps * v) - logits(point - eps * v)) / (2 * eps) for v in vs]
        errors.append(_rel(analytic, np.stack(numeric)))
    return min(errors)


def tie_convention(part: Slice, a: np.ndarray, steps=(1e-5, 1e-6)) -> np.ndarray:
    """Per image, relative L2 of ``G(A) − G(A + δR)``, ``R`` a ramp falling with the flat index,
    the smallest over the steps ``δ``: exact ties (ReLU zeros, MaxPool windows of zeros) are
    broken at every step, so a wrong convention is off at each; a ReLU input downstream that
    sits within ``δ`` of zero is crossed too, and those crossings shrink with ``δ``
    (RegNetX-200MF's stage 2: 0.10 at 1e-5, 0.028 at 1e-6, 0.012 at 3e-7)."""
    flat = np.arange(int(np.prod(a.shape[1:])), dtype=np.float64).reshape(a.shape[1:])
    scale = float(np.max(np.abs(a))) or 1.0
    at = part.gradients(a).astype(np.float64)
    per = [part.gradients(a - (1.0 + flat / flat.size) * step * scale).astype(np.float64)
           for step in steps]
    return np.array([min(_rel(g[i], at[i]) for g in per) for i in range(len(a))])


def explained_score(model: onnx.ModelProto) -> str:
    """The tensor the file's gradients are of: ``logits``, or a softmax head's class logits
    ``z_c`` where it was exported with ``--target logit`` (``heads.TARGET_LOGITS``)."""
    from bincam.export.heads import TARGET_LOGITS

    return TARGET_LOGITS if any(TARGET_LOGITS in n.output for n in model.graph.node) \
        else "logits"


def factored_head(model: onnx.ModelProto, engine, rng) -> float:
    """Relative max error of ``Δz = (W·h·w)·Δ mean_hw(ReLU?(A))`` between two generic points
    ``P, Q = A + s·(N + c)`` around the engine's own ``A`` (``N`` noise, ``c`` a per-channel
    offset, so the pooled features differ by ``O(s)``), ``z`` computed by the file's
    ``A → logits`` slice (the explained score: ``z_c`` for ``--target logit``) — in float64 where ONNX Runtime has double kernels for it."""
    from bincam.core.preprocess import model_input, preprocessing_of

    size = engine.info.image_size or 224
    images = rng.random((1, 3, size, size), dtype=np.float32)
    out = engine.run(images)
    part = Slice(model, engine.info)
    a = part.activations(model_input(images, preprocessing_of(engine.info))).astype(np.float64)
    scale = float(np.sqrt(np.mean(a ** 2))) or 1.0
    offsets = rng.standard_normal((2, 1, a.shape[1], 1, 1))
    p, q = (np.float32(a + scale * (rng.standard_normal(a.shape) + c)).astype(np.float64)
            for c in offsets)  # float32 values: the float32 slice reads the same points
    exact = float64_slice(part)

    def logits(x: np.ndarray) -> np.ndarray:
        if exact is not None:
            return exact.run([part.score], dict(part.feeds(x), **{part.name: x}))[0]
        return part.logits(x).astype(np.float64)

    def pooled(x: np.ndarray) -> np.ndarray:
        return (np.maximum(x, 0) if engine.info.mask_positive else x).mean(axis=(2, 3))

    weights = out["channel_weights"].astype(np.float64) * a.shape[2] * a.shape[3]
    predicted = (pooled(p) - pooled(q)) @ weights.T
    actual = logits(p) - logits(q)
    return float(np.abs(predicted - actual).max() / max(np.abs(actual).max(), 1e-30))


def self_checks(model: onnx.ModelProto, engine, seed: int = 0) -> dict[str, float]:
    """The torch-free figures for ``model`` (opened as ``engine``): finite differences and ties
    for dense gradients, the head identity for factored ones."""
    rng = np.random.default_rng(seed)
    if engine.info.gradient_layout == "factored":
        return {"factored head": factored_head(model, engine, rng)}
    part = Slice(model, engine.info)
    size = engine.info.image_size or 224
    images = np.concatenate([rng.random((2, 3, size, size), dtype=np.float32),
                             np.full((1, 3, size, size), 0.5, np.float32)])  # flat: many ties
    from bincam.core.preprocess import model_input, preprocessing_of

    a = part.activations(model_input(images, preprocessing_of(engine.info)))
    exact = float64_slice(part)
    key = "finite differences" + (" (float64)" if exact is not None else " (float32)")
    ties = tie_convention(part, a)
    return {key: finite_differences(part, a, rng, exact), "ties": float(ties[:2].max()),
            "ties (flat image)": float(ties[2])}


LIMITS = {"finite differences (float64)": FD64_LIMIT, "finite differences (float32)": FD32_LIMIT,
          "ties": TIE_LIMIT, "ties (flat image)": TIE_LIMIT, "factored head": FACTORED_LIMIT}
# figures above their limit that cannot show the file wrong: a flat image ties every position,
# and where the net cancels to exactly zero downstream (NF-ResNet-26's stage 2: 0.45 on the
# flat image at both steps, ≤ 0.003 on the random ones, its gradients within 6e-7 of float64
# autograd) a nudge crosses that kink either way
WARN_ONLY = frozenset({"ties (flat image)"})
