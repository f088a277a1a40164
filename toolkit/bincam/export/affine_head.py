"""Affine heads of ONNX graphs: when the slice from the CAM tensor ``A`` to the logits is

    [Relu →] GlobalAveragePool | ReduceMean(h, w) → [Flatten | Reshape | Squeeze]* →
    (Gemm | MatMul [→ Add])+

with constant weights, ``z = W_eff·mean_hw(ReLU?(A)) + b_eff`` and ``∂z_k/∂A = W_eff[k]/(h·w)``
(times ``1[A > 0]`` after the Relu): the factored form, with no K-fold tensor. ``W_eff`` is the
product of the Linear maps, in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass
class AffineHead:
    weight: np.ndarray       # W_eff [K, C]
    bias: np.ndarray         # b_eff [K]
    relu_first: bool         # the head starts with ReLU: the gradient carries 1[A > 0]


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _linear(node, x: str, consts: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """``(W [out, in], b [out])`` of a Gemm / MatMul / Add reading ``x`` and constants only."""
    others = [i for i in node.input if i and i != x]
    if any(i not in consts for i in others) or list(node.input).count(x) != 1:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        if attrs.get("transA", 0) or node.input[0] != x:
            return None
        w = consts[node.input[1]].astype(np.float64)
        w = w if attrs.get("transB", 0) else w.T
        bias = consts[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] \
            else np.zeros(w.shape[0])
        return attrs.get("alpha", 1.0) * w, np.broadcast_to(attrs.get("beta", 1.0) * bias,
                                                            (w.shape[0],)).copy()
    if node.op_type == "MatMul" and node.input[0] == x and consts[node.input[1]].ndim == 2:
        w = consts[node.input[1]].astype(np.float64).T
        return w, np.zeros(w.shape[0])
    if node.op_type == "Add":
        return None, consts[others[0]].astype(np.float64).reshape(-1)
    return None


def find_affine_head(model: onnx.ModelProto, activation: str, logits: str) -> AffineHead | None:
    """The affine head from ``activation`` (``[B, C, h, w]``) to ``logits``, or None when the
    slice is anything else."""
    from bincam.export.vjp import path_nodes

    nodes = path_nodes(model.graph, activation, logits)
    consts = _constants(model.graph)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    shapes = {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.value_info) + list(inferred.output)}
    a_shape = shapes.get(activation, [])
    if len(a_shape) != 4 or a_shape[1] is None:
        return None
    tensor, relu, pooled, weight, bias = activation, False, False, None, None
    for node in nodes:
        path_inputs = [i for i in node.input if i == tensor]
        if not path_inputs or len(node.output) != 1:
            return None
        op, attrs = node.op_type, {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op == "Relu" and not pooled and not relu and tensor == activation:
            relu = True
        elif op == "GlobalAveragePool" and not pooled:
            pooled = True
        elif op == "ReduceMean" and not pooled:
            axes = attrs.get("axes")
            if axes is None and len(node.input) > 1:
                axes = consts.get(node.input[1])
            if axes is None or sorted(int(a) % 4 for a in np.atleast_1d(axes)) != [2, 3]:
                return None
            pooled = True
        elif op in ("Flatten", "Reshape", "Squeeze", "Identity") and pooled and weight is None:
            pass  # [B, C, 1, 1] → [B, C]: no change of values
        elif op in ("Gemm", "MatMul", "Add") and pooled:
            if weight is None and shapes.get(tensor, [])[1:] != [a_shape[1]]:
                return None  # the pooled [B, C] must enter the first Linear map as it is
            step = _linear(node, tensor, consts)
            if step is None:
                return None
            w, b = step
            if w is None:  # Add: a bias after a Linear map
                if weight is None or b.shape[0] != weight.shape[0]:
                    return None
                bias = bias + b
            else:
                weight, bias = (w, b) if weight is None else (w @ weight, w @ bias + b)
        else:
            return None
        tensor = node.output[0]
    if tensor != logits or weight is None:
        return None
    return AffineHead(weight, bias, relu)
