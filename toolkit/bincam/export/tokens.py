"""Token activations of vision transformers as CAM maps ``[B, C, h, w]``, inside the graph.

- ``vit``: ``T [B, 1 + h·w, C]`` (class token first) → drop the class token → ``[B, C, h, w]``;
- ``swin``: ``T [B, h, w, C]`` → ``[B, C, h, w]``.

The gradient ``∂z/∂T [B, K, *T]`` goes through the same index map, so every engine, the CAM
methods, the epilogue and PE see the usual ``activations [B, C, h, w]`` and
``gradients [B, K, C, h, w]`` (what pytorch-grad-cam users write a ``reshape_transform`` for).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bincam.errors import BincamError

TOKEN_LAYOUTS = ("none", "vit", "swin")


def token_grid(shape: list[int | None], layout: str, name: str) -> tuple[int, int, int]:
    """``(C, h, w)`` of a token tensor's map (``shape`` with the batch axis first)."""
    dims = shape[1:]
    if layout == "vit" and len(dims) == 2 and all(dims):
        side = math.isqrt(dims[0] - 1)
        if side * side == dims[0] - 1:
            return dims[1], side, side
    if layout == "swin" and len(dims) == 3 and all(dims):
        return dims[2], dims[0], dims[1]
    want = "[B, 1 + h·w, C] with a square h·w" if layout == "vit" else "[B, h, w, C]"
    raise BincamError(f"--tokens {layout} needs the activation {name!r} as {want}; it is "
                      f"{['B', *dims]}")


def _const(graph: onnx.GraphProto, name: str, value) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
    return name


def _to_maps(graph: onnx.GraphProto, source: str, target: str, layout: str,
             grid: tuple[int, int, int], lead: int, prefix: str) -> None:
    """Nodes turning ``source`` (``lead`` leading axes, then the token axes) into ``target``
    (``lead`` axes, then ``C, h, w``)."""
    c, h, w = grid
    axes = list(range(lead))
    if layout == "vit":
        body = f"{prefix}/patches"
        graph.node.append(helper.make_node(
            "Slice", [source, _const(graph, f"{prefix}/start", [1]),
                      _const(graph, f"{prefix}/end", [1 + h * w]),
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
                   grid: tuple[int, int, int]) -> None:
    """Output ``activations [B, C, h, w]`` computed from the token tensor ``activation``."""
    _to_maps(graph, activation, "activations", layout, grid, 1, "bincam/tokens")


def token_gradients(model: onnx.ModelProto, layout: str, grid: tuple[int, int, int]) -> None:
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
                                                    lead + list(grid)))
