"""Token activations of vision transformers as CAM maps ``[B, C, h, w]``, inside the graph.

- ``vit``: ``T [B, P + h·w, C]``, ``P`` prefix tokens first (the class token; timm's
  distillation and register tokens; none) → drop them → ``[B, C, h, w]``. ``P`` is read from
  ``N``: 0 where ``N`` is a square, else ``N − ⌊√N⌋²`` (unambiguous while ``P ≤ 2·h``: 1 class
  + 1 distillation + 4 register tokens on a 14×14 grid are 201 = 196 + 5);
- ``swin``: ``T [B, h, w, C]`` (channels last: torchvision's and timm's Swin) → ``[B, C, h, w]``.

The gradient ``∂z/∂T [B, K, *T]`` goes through the same index map, so every engine, the CAM
methods, the epilogue and PE see the usual ``activations [B, C, h, w]`` and
``gradients [B, K, C, h, w]`` (what pytorch-grad-cam users write a ``reshape_transform`` for).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bincam.errors import BincamError

TOKEN_LAYOUTS = ("none", "vit", "swin")
MAX_PREFIX = 16  # prefix tokens of a ViT: class, distillation, registers (timm: at most 8)


class TokenGrid(NamedTuple):
    """The maps ``[C, h, w]`` of a token tensor, and how many prefix tokens precede them."""
    c: int
    h: int
    w: int
    prefix: int = 0

    @property
    def dims(self) -> list[int]:
        return [self.c, self.h, self.w]


def vit_prefix(tokens: int) -> int | None:
    """``P`` of ``N = P + h·w`` tokens (square ``h·w`` > 1): 0 where ``N`` is a square, else
    ``N − ⌊√N⌋²``; None when no grid of more than one patch is left or ``P > MAX_PREFIX``
    (a class token, a distillation token and registers are a handful)."""
    side = math.isqrt(tokens)
    prefix = tokens - side * side
    return prefix if side > 1 and prefix <= MAX_PREFIX else None


def token_grid(shape: list[int | None], layout: str, name: str) -> TokenGrid:
    """The map grid of a token tensor (``shape`` with the batch axis first)."""
    dims = shape[1:]
    if layout == "vit" and len(dims) == 2 and all(dims):
        prefix = vit_prefix(dims[0])
        if prefix is not None:
            side = math.isqrt(dims[0] - prefix)
            return TokenGrid(dims[1], side, side, prefix)
    if layout == "swin" and len(dims) == 3 and all(dims):
        return TokenGrid(dims[2], dims[0], dims[1])
    want = "[B, P + h·w, C] with a square h·w (P prefix tokens: class, distillation, register)" \
        if layout == "vit" else "[B, h, w, C]"
    raise BincamError(f"--tokens {layout} needs the activation {name!r} as {want}; it is "
                      f"{['B', *dims]}")


def run_shape(model: onnx.ModelProto, name: str, size: int | None, nhwc: bool = False
              ) -> list[int | None] | None:
    """The shape of ``name`` (batch axis unknown) on one gray ``size`` px image, by ONNX Runtime:
    for the dims shape inference leaves unknown (timm's computed reshapes: PiT, Swin). None when
    the graph cannot run so."""
    inputs = [i for i in model.graph.input
              if i.name not in {t.name for t in model.graph.initializer}]
    if not size or len(inputs) != 1 or \
            inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        return None
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    if name not in {o.name for o in probe.graph.output}:
        probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    image = np.full([1, size, size, 3] if nhwc else [1, 3, size, size], 0.5, np.float32)
    try:
        session = ort.InferenceSession(probe.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        value = session.run([name], {inputs[0].name: image})[0]
    except Exception:  # noqa: BLE001 - ORT's errors vary; the caller reports the shape it had
        return None
    return [None, *value.shape[1:]]


def _const(graph: onnx.GraphProto, name: str, value) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
    return name


def _to_maps(graph: onnx.GraphProto, source: str, target: str, layout: str,
             grid: TokenGrid, lead: int, prefix: str) -> None:
    """Nodes turning ``source`` (``lead`` leading axes, then the token axes) into ``target``
    (``lead`` axes, then ``C, h, w``)."""
    c, h, w, first = grid
    axes = list(range(lead))
    if layout == "vit":
        body = f"{prefix}/patches"
        graph.node.append(helper.make_node(
            "Slice", [source, _const(graph, f"{prefix}/start", [first]),
                      _const(graph, f"{prefix}/end", [first + h * w]),
                      _const(graph, f"{prefix}/axis", [lead])], [body], name=body))
        moved = f"{prefix}/channels_first"
        graph.node.append(helper.make_node("Transpose", [body], [moved], name=moved,
                                           perm=axes + [lead + 1, lead]))
        shape = _const(graph, f"{prefix}/shape", [0] * lead + [c, h, w])  # 0: keep that axis
        graph.node.append(helper.make_node("Reshape", [moved, shape], [target], name=target))
    else:
        graph.node.append(helper.make_node("Transpose", [source], [target], name=target,
                                           perm=axes + [lead + 2, lead, lead + 1]))


def add_token_maps(graph: onnx.GraphProto, activation: str, layout: str,
                   grid: TokenGrid) -> None:
    """Output ``activations [B, C, h, w]`` computed from the token tensor ``activation``."""
    _to_maps(graph, activation, "activations", layout, grid, 1, "bincam/tokens")


def token_gradients(model: onnx.ModelProto, layout: str, grid: TokenGrid) -> None:
    """Turn the output ``gradients [B, K, *T]`` into ``gradients [B, K, C, h, w]``."""
    producer = next(n for n in model.graph.node if "gradients" in n.output)
    producer.output[list(producer.output).index("gradients")] = "gradients_tokens"
    _to_maps(model.graph, "gradients_tokens", "gradients", layout, grid, 2,
             "bincam/token_gradients")
    out = next(o for o in model.graph.output if o.name == "gradients")
    raw = model.graph.value_info.add()  # its shape, for tools that cut the graph (self-checks)
    raw.CopyFrom(out)
    raw.name = "gradients_tokens"
    lead = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim[:2]]  # B, K
    out.type.CopyFrom(helper.make_tensor_type_proto(out.type.tensor_type.elem_type,
                                                    lead + grid.dims))
