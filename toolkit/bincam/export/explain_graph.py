"""The explaining graph: a gradient graph (``export/model.py``) extended with the rest of the binary
CAM pipeline, so that the file's outputs are the explanations themselves.

    logits [B,K] ─► s = sign(z) | +1 | −1 (mode)
    activations, gradients | channel_weights ─► CAM method (explain_ops) ─► raw [B,K,h,w]
    raw ─► x = minmax(ReLU(raw)) ─► F = minmax(ReLU(R_y·x·R_xᵀ)) ─► heatmaps [B,K,S,S]
    x  ─► PE = (⟨x, R_yᵀMR_x⟩ − m·|M|) / (⟨x, R_yᵀ1R_x⟩ − m·S²) ─► energy [B,K]

``R`` are the bilinear half-pixel interpolation matrices of ``core.epilogue`` (constants, so the
resize is two MatMuls and matches the core exactly), and ``m``, the minimum of the upsampled map,
is read on the run-end rows and columns where a bilinear map attains its extremes
(``core.energy``). Because each row of ``R`` sums to 1, the second min-max is applied to the small
map before resizing: ``F = R_y·((x − m)/(M − m + ε))·R_xᵀ``, so the large map is written once.
uint8 maps are ``⌊255·F + ½⌋`` (the ``+ ½`` also folded into the small map; the float → uint8 Cast
truncates toward zero in ONNX Runtime and TensorRT, which on these non-negative values is ⌊·⌋).
Everything here is float32, also in an fp16 gradient graph, except with
``cam_precision="float64"``: then the CAM method (the weighted sums, where float32 cancellation can
show after the min-max, e.g. XGrad-CAM's ``Σ_hw A_c`` of signed pre-ReLU activations) runs in
float64, as the core does — for ONNX Runtime; TensorRT has no float64.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto

from bincam.core.energy import MaskEnergy
from bincam.core.epilogue import EPS
from bincam.core.methods import cam_method
from bincam.core.model_info import onnx_info, write_metadata
from bincam.core.modes import check_mode
from bincam.errors import BincamError
from bincam.export.explain_ops import MethodGraph, OnnxBuilder
from bincam.export.names import rename_tensor

MAP_DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
              "uint8": TensorProto.UINT8}
CAM_PRECISIONS = {"float32": np.float32, "float64": np.float64}
FACTORED_WEIGHTS = "bincam/channel_weights"
LOGITS = "bincam/explained_logits"  # the gradient graph's logits output, now internal
OUTPUT_NAMES = ("logits", "heatmaps", "energy", "raw_maps")


@dataclass
class ExplainSpec:
    """What an explaining graph computes."""

    method: str = "gradcam"
    mode: str = "predicted"
    map_size: int | None = None     # side of the heatmaps (default: the input size)
    map_dtype: str = "float32"      # float32 | float16 | uint8
    raw_maps: bool = False          # also output the h×w weighted sums
    cam_precision: str = "float32"  # float64: the CAM method in float64 (ONNX Runtime only)

    def check(self) -> "ExplainSpec":
        cam_method(self.method), check_mode(self.mode)
        if self.map_dtype not in MAP_DTYPES:
            raise BincamError(f"--map-dtype must be one of {', '.join(MAP_DTYPES)}, "
                              f"got {self.map_dtype!r}")
        if self.cam_precision not in CAM_PRECISIONS:
            raise BincamError(f"--cam-precision must be one of {', '.join(CAM_PRECISIONS)}, "
                              f"got {self.cam_precision!r}")
        if self.map_size is not None and not 1 <= self.map_size <= 4096:
            raise BincamError(f"--map-size must be between 1 and 4096, got {self.map_size}")
        return self


def _shape(model: onnx.ModelProto, name: str) -> list[int | None]:
    vi = next((o for o in model.graph.output if o.name == name), None)
    dims = vi.type.tensor_type.shape.dim if vi is not None else []
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def append_explanation(model: onnx.ModelProto, spec: ExplainSpec,
                       masks: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """The explaining graph of a gradient graph, for all its attributes (narrow them first with
    ``model.narrow_attributes``). ``masks``: attribute name → bool ``[S, S]`` mask at the map
    size; PE is NaN for attributes without one, and there is no ``energy`` output when no
    attribute has a mask."""
    spec.check()
    info = onnx_info(model, "the gradient graph")
    names = list(info.attributes)
    c, h, w = _shape(model, "activations")[1:]
    if not all(isinstance(v, int) and v > 0 for v in (c, h, w)):
        raise BincamError("the explaining graph needs activations [B, C, h, w] with static C, h and "
                          "w; export with a fixed input size")
    size = spec.map_size or info.image_size
    if not size:
        raise BincamError("the model's input size is not static; give --map-size")
    if size < max(h, w):
        raise BincamError(f"--map-size {size} is smaller than the CAM layer's {h}×{w}: the maps "
                          "are upsampled, never shrunk (min-max of a shrunk map is ill-posed)")
    taken = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    clash = sorted(taken & (set(OUTPUT_NAMES[1:]) | {LOGITS}))
    if clash:
        raise BincamError(f"the model already has tensor(s) named {', '.join(clash)}, which the "
                          "explaining file outputs; rename them in the source model")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    factored, weight_name = info.gradient_layout == "factored", FACTORED_WEIGHTS
    if factored:  # the initializer behind the channel_weights output (an Identity of it; after
        producer = next(n for n in g.node if n.output[0] == "channel_weights")  # fp16: renamed)
        behind = next(i for i in g.initializer if i.name == producer.input[0])
        for stale in [i for i in g.initializer if i.name == FACTORED_WEIGHTS and i is not behind]:
            g.initializer.remove(stale)
        behind.name = FACTORED_WEIGHTS
        weight_type = behind.data_type
        g.node.remove(producer)
    del g.output[:]
    rename_tensor(g, "logits", LOGITS)
    b, k = OnnxBuilder(out), len(names)
    logits = LOGITS
    dtype = CAM_PRECISIONS[spec.cam_precision]
    cast = (lambda t: t) if dtype == np.float32 else \
        (lambda t: b.op("Cast", t, to=TensorProto.DOUBLE))
    sign = {"predicted": lambda: cast(b.op("Sign", logits)), "positive": lambda: None,
            "negative": lambda: -np.ones((1, k), dtype)}[spec.mode]()
    methods = MethodGraph(b, cast("activations"), sign, k, (c, h, w), dtype)
    if not factored:
        raw = methods.dense(spec.method, cast("gradients"))
    else:
        if weight_type != TensorProto.FLOAT:  # an fp16 graph's converter made them float16
            weight_name = b.op("Cast", weight_name, to=TensorProto.FLOAT)
        raw = methods.factored(spec.method, cast(weight_name), info.mask_positive)
    if dtype != np.float32:
        raw = b.op("Cast", raw, to=TensorProto.FLOAT)

    wrong = [n for n, m in (masks or {}).items() if np.shape(m) != (size, size)]
    if wrong:
        raise BincamError(f"the masks of {', '.join(wrong)} are not {size}×{size} (the map size)")
    mask_stack = np.stack([masks[n] if masks and n in masks else np.zeros((size, size), bool)
                           for n in names])
    energy = MaskEnergy(mask_stack, (h, w))
    x, low, low_flat, high = _normalise(b, raw, energy)
    outputs = [("logits", logits, TensorProto.FLOAT, ["batch", k])]
    outputs.append(("heatmaps", _heatmaps(b, x, low, high, energy, spec.map_dtype),
                    MAP_DTYPES[spec.map_dtype], ["batch", k, size, size]))
    with_mask = [n for n in names if masks and n in masks]
    if with_mask:
        outputs.append(("energy", _energy(b, x, low_flat, energy, [n in with_mask for n in names]),
                        TensorProto.FLOAT, ["batch", k]))
    if spec.raw_maps:
        outputs.append(("raw_maps", raw, TensorProto.FLOAT, ["batch", k, h, w]))
    for name, source, elem, shape in outputs:
        b.output(name, source, elem, shape)

    info.attributes = names
    info.explain = dict(asdict(spec), map_size=[size, size], feature_size=[h, w],
                        value_range=[0, 255] if spec.map_dtype == "uint8" else [0, 1],
                        energy_attributes=with_mask,
                        mask_fraction=[float(a) / (size * size) if n in with_mask else None
                                       for n, a in zip(names, energy.mask_area)],
                        outputs={o[0]: OUTPUT_DOCS[o[0]] for o in outputs})
    write_metadata(out, info)
    return out


OUTPUT_DOCS = {
    "logits": "float32 [B,K] raw scores z of the attributes, in bincam.attributes order",
    "heatmaps": "[B,K,S,S] final CAM of each attribute's explained class (mode), in value_range",
    "energy": "float32 [B,K] proportional energy of each heatmap inside its attribute's mask "
              "(NaN: no mask)",
    "raw_maps": "float32 [B,K,h,w] weighted sums of the CAM method before ReLU and min-max",
}


def _normalise(b: OnnxBuilder, raw: str, energy: MaskEnergy) -> tuple[str, str, str, str]:
    """``x = minmax(ReLU(raw))`` ``[B,K,h,w]``, the minimum ``m`` of its upsampled map as
    ``[B,K,1,1]`` and ``[B,K]``, and its maximum ``M`` ``[B,K,1,1]``: both read on the run-end
    rows × columns (two small MatMuls)."""
    x = b.op("Relu", raw)
    x = b.op("Sub", x, b.reduce("ReduceMin", x, [2, 3]))
    x = b.op("Div", x, b.op("Add", b.reduce("ReduceMax", x, [2, 3]), b.const(EPS, "eps")))
    corners = b.op("MatMul", b.op("MatMul", b.const(energy.ry[energy.rows], "ry_ends"), x),
                   b.const(energy.rx[energy.cols].T, "rx_ends_t"))
    zero = b.const(0.0, "zero")
    low = b.op("Max", b.reduce("ReduceMin", corners, [2, 3]), zero)
    low_flat = b.op("Max", b.reduce("ReduceMin", corners, [2, 3], keepdims=False), zero)
    return x, low, low_flat, b.reduce("ReduceMax", corners, [2, 3])


def _heatmaps(b: OnnxBuilder, x: str, low: str, high: str, energy: MaskEnergy, dtype: str
              ) -> str:
    """``F = R_y·((x − m)/(M − m + ε))·R_xᵀ`` in the asked type (ReLU for float maps)."""
    xn = b.op("Div", b.op("Sub", x, low), b.op("Add", b.op("Sub", high, low), b.const(EPS, "eps")))
    if dtype == "uint8":
        xn = b.op("Add", b.op("Mul", xn, b.const(255.0, "levels")), b.const(0.5, "half"))
    # one batched MatMul writes the large map (a 2-D Gemm with ReLU fused, or a 1×1 Conv, was
    # slower in ONNX Runtime: the reshape to [B,K,H,W] of a graph output is a copy)
    up = b.op("MatMul", b.op("MatMul", b.const(energy.ry, "ry"), xn), b.const(energy.rx.T, "rx_t"))
    if dtype != "uint8":
        up = b.op("Relu", up)
    if dtype == "uint8":  # values in [½ − ε, 255.5): truncation toward zero is ⌊·⌋
        return b.op("Cast", up, to=TensorProto.UINT8)
    return up if dtype == "float32" else b.op("Cast", up, to=TensorProto.FLOAT16)


def _energy(b: OnnxBuilder, x: str, low: str, energy: MaskEnergy, has_mask: list[bool]) -> str:
    """PE ``[B,K]`` from the normalised ``h×w`` maps (``core.energy.MaskEnergy.energy``)."""
    inside = b.reduce("ReduceSum", b.op("Mul", x, b.const(energy.inside, "mask_inside")), [2, 3],
                      keepdims=False)
    total = b.reduce("ReduceSum", b.op("Mul", x, b.const(energy.total, "frame_total")), [2, 3],
                     keepdims=False)
    num = b.op("Sub", inside, b.op("Mul", low, b.const(energy.mask_area, "mask_area")))
    den = b.op("Sub", total, b.op("Mul", low, b.const(float(energy.area), "area")))
    empty = b.op("LessOrEqual", den, b.const(1e-12 * energy.area, "tiny"))  # NaN: not empty
    pe = b.op("Where", empty, b.const(0.0, "zero"),
              b.op("Div", num, b.op("Where", empty, b.const(1.0, "one"), den)))
    if all(has_mask):
        return pe
    return b.op("Where", b.const(has_mask, "has_mask", np.bool_), pe, b.const(np.nan, "nan"))

