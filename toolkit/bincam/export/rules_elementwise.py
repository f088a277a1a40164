"""VJP rules of element-wise ops, broadcasting ops and Softmax, with PyTorch's autograd values at
every kink: the gradient a rule exports is the one ``torch.autograd`` gives for the torch op the
exporters map to it (``nn.Hardswish``, ``nn.Hardsigmoid``, ``nn.ReLU6``/``F.hardtanh``/
``torch.clamp``, ``torch.maximum``/``minimum``, ``torch.where``, …).
"""

from __future__ import annotations

import weakref

import numpy as np
from onnx import TensorProto, shape_inference

from bincam.errors import BincamError
from bincam.export.rules import _attrs, _collect, _const, _only, vjp_rule

_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
_ELEM_TYPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _elem_type(b, name: str) -> int:
    """The ONNX element type of forward tensor ``name`` (one type inference per builder)."""
    if b not in _ELEM_TYPES:
        graph = shape_inference.infer_shapes(b.model, data_prop=True).graph
        types = {vi.name: vi.type.tensor_type.elem_type
                 for vi in [*graph.value_info, *graph.input, *graph.output]}
        types.update({i.name: i.data_type for i in graph.initializer})
        types.update({n.output[0]: n.attribute[0].t.data_type for n in graph.node
                      if n.op_type == "Constant" and n.attribute[0].name == "value"})
        _ELEM_TYPES[b] = types
    if not _ELEM_TYPES[b].get(name):
        raise BincamError(f"no element type known for tensor {name!r}")
    return _ELEM_TYPES[b][name]


def _inside(b, x: str, lo: float | None, hi: float | None, value: str) -> str:
    """``value`` where ``lo < x < hi`` (strictly; a bound of None is absent), 0 elsewhere."""
    if hi is not None:
        value = b.node("Where", [b.node("Greater", [b.const(hi, "hi"), x], "below"), value,
                                 b.const(0.0, "zero")], "inside")
    if lo is not None:
        value = b.node("Where", [b.node("Greater", [x, b.const(lo, "lo")], "above"), value,
                                 b.const(0.0, "zero")], "inside")
    return value


@vjp_rule("HardSwish")
def hard_swish(b, node, dys, wanted):
    """``Y = X·relu6(X + 3)/6``: ``dX = dY·s``, ``s = 0`` for ``X ≤ −3``, ``X/3 + ½`` for
    ``−3 < X < 3``, ``1`` for ``X ≥ 3`` — at the kinks PyTorch's 0 (at −3) and 1 (at +3)."""
    x, y = node.input[0], node.output[0]
    middle = b.node("Add", [b.node("Div", [x, b.const(3.0, "three")], "third"),
                            b.const(0.5, "half")], "middle")
    upper = b.node("Where", [b.node("Greater", [b.const(3.0, "three"), x], "below"), middle,
                             b.const(1.0, "one")], "upper")
    slope = b.node("Where", [b.node("Greater", [x, b.const(-3.0, "minus_three")], "above"), upper,
                             b.const(0.0, "zero")], "slope")
    return {x: b.node("Mul", [dys[y], slope], "hard_swish")}


@vjp_rule("HardSigmoid")
def hard_sigmoid(b, node, dys, wanted):
    """``Y = max(0, min(1, αX + β))``: ``dX = α·dY`` strictly inside ``−β/α < X < (1 − β)/α``, 0
    elsewhere — at the kinks 0, as PyTorch (``−3 < X < 3`` for ``nn.Hardsigmoid``). The bounds
    are in ``X`` (float32), not in ``αX + β``, whose rounding saturates just below them."""
    a = _attrs(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    lo, hi = (float(np.float32(v)) for v in (-beta / alpha, (1.0 - beta) / alpha))
    x, y = node.input[0], node.output[0]
    scaled = b.node("Mul", [dys[y], b.const(alpha, "alpha")], "hard_sigmoid")
    return {x: _inside(b, x, lo, hi, scaled)}


@vjp_rule("Clip")
def clip(b, node, dys, wanted):
    """``Y = min(max(X, lo), hi)``: ``dX = dY`` strictly inside ``lo < X < hi``, 0 elsewhere — 0 at
    ``X = lo`` and ``X = hi``, as PyTorch's ``clamp``, ``hardtanh`` and ``ReLU6`` (= Clip(0, 6))."""
    _only(node, wanted)
    a = _attrs(node)
    bounds = [a.get("min"), a.get("max")]
    for i, what in ((1, "min"), (2, "max")):
        if len(node.input) > i and node.input[i]:
            bounds[i - 1] = float(_const(b, node.input[i], what, node))
    return {node.input[0]: _inside(b, node.input[0], *bounds, dys[node.output[0]])}


@vjp_rule("Div")
def div(b, node, dys, wanted):
    """``Y = A/B``: ``dA = dY/B``, ``dB = −dY·(Y/B)`` (PyTorch's ``−dY·(A/B)/B``), summed over
    broadcast axes."""
    (a, d), y = node.input, node.output[0]
    dy, pairs = dys[y], []
    if a in wanted:
        pairs.append((a, b.unbroadcast(b.node("Div", [dy, d], "div"), a, y)))
    if d in wanted:
        factor = b.node("Neg", [b.node("Div", [y, d], "y_over_b")], "neg")
        pairs.append((d, b.unbroadcast(b.node("Mul", [dy, factor], "div"), d, y)))
    return _collect(b, pairs)


@vjp_rule("Erf")
def erf(b, node, dys, wanted):
    """``dX = dY·(2/√π)·exp(−X²)``."""
    x = node.input[0]
    gauss = b.node("Exp", [b.node("Neg", [b.node("Mul", [x, x], "square")], "neg")], "gauss")
    slope = b.node("Mul", [gauss, b.const(2.0 / np.sqrt(np.pi), "two_over_sqrt_pi")], "slope")
    return {x: b.node("Mul", [dys[node.output[0]], slope], "erf")}


@vjp_rule("Pow")
def pow_(b, node, dys, wanted):
    """``Y = X^p`` with a constant exponent: ``dX = dY·p·X^(p−1)`` (``X^1`` written as ``X``)."""
    _only(node, wanted)
    x, y = node.input[0], node.output[0]
    p = np.asarray(_const(b, node.input[1], "exponent", node), dtype=np.float32)
    power = x if np.all(p == 2) else b.node("Pow", [x, b.const(p - 1, "p_minus_1")], "power")
    slope = b.node("Mul", [power, b.const(p, "p")], "slope")
    return {x: b.unbroadcast(b.node("Mul", [dys[y], slope], "pow"), x, y)}


@vjp_rule("Sqrt")
def sqrt(b, node, dys, wanted):
    """``dX = dY/(2Y)`` (as PyTorch: ``inf`` or ``nan`` at ``X = 0``)."""
    y = node.output[0]
    return {node.input[0]: b.node("Div", [dys[y], b.node("Mul", [y, b.const(2.0, "two")], "twice")],
                                  "sqrt")}


@vjp_rule("Tanh")
def tanh(b, node, dys, wanted):
    """``dX = dY·(1 − Y²)``."""
    y = node.output[0]
    slope = b.node("Sub", [b.const(1.0, "one"), b.node("Mul", [y, y], "square")], "slope")
    return {node.input[0]: b.node("Mul", [dys[y], slope], "tanh")}


@vjp_rule("Neg")
def neg(b, node, dys, wanted):
    """``dX = −dY``."""
    return {node.input[0]: b.node("Neg", [dys[node.output[0]]], "neg")}


@vjp_rule("Where")
def where(b, node, dys, wanted):
    """``Y = C ? A : B``: ``dA = C ? dY : 0``, ``dB = C ? 0 : dY`` (summed over broadcast axes);
    the boolean condition, constant or computed, gets none."""
    (c, a, other), y = node.input, node.output[0]
    dy, zero, pairs = dys[y], b.const(0.0, "zero"), []
    if a in wanted:
        pairs.append((a, b.unbroadcast(b.node("Where", [c, dy, zero], "where"), a, y)))
    if other in wanted:
        pairs.append((other, b.unbroadcast(b.node("Where", [c, zero, dy], "where"), other, y)))
    return _collect(b, pairs)


@vjp_rule("Expand")
def expand(b, node, dys, wanted):
    """``dX = dY`` summed over the axes the expansion added or stretched; the shape gets none."""
    x, y = node.input[0], node.output[0]
    return {x: b.unbroadcast(dys[y], x, y)} if x in wanted else {}


@vjp_rule("Sum")
def sum_(b, node, dys, wanted):
    """``dXᵢ = dY`` (summed over broadcast axes)."""
    dy, y = dys[node.output[0]], node.output[0]
    return _collect(b, [(x, b.unbroadcast(dy, x, y)) for x in node.input if x in wanted])


@vjp_rule("Max", "Min")
def extremum(b, node, dys, wanted):
    """``Y = max(X₁, …)`` (or min): ``dXᵢ = dY·1[Xᵢ = Y]/n``, ``n`` the number of inputs equal to
    ``Y`` — a tie is split evenly, as PyTorch's ``maximum``/``minimum`` (½ each)."""
    dy, y = dys[node.output[0]], node.output[0]
    hits = {x: b.node("Cast", [b.node("Equal", [x, y], "is_extremum")], "hit", to=TensorProto.FLOAT)
            for x in node.input}
    count = b.node("Sum", [hits[x] for x in node.input], "ties") if len(node.input) > 1 else None
    pairs = []
    for x in node.input:
        if x in wanted:
            share = b.node("Div", [hits[x], count], "share") if count else hits[x]
            pairs.append((x, b.unbroadcast(b.node("Mul", [dy, share], "extremum"), x, y)))
    return _collect(b, pairs)


@vjp_rule("Softmax")
def softmax(b, node, dys, wanted):
    """``dX = Y·(dY − Σ_axis dY·Y)`` (opset ≥ 13: one axis, default −1)."""
    x, y = node.input[0], node.output[0]
    axis = _attrs(node).get("axis", -1) % len(b.shape(x))
    dy = dys[y]
    total = b.reduce("ReduceSum", b.node("Mul", [dy, y], "weighted"), [axis + 1], "total")
    return {x: b.node("Mul", [y, b.node("Sub", [dy, total], "centred")], "softmax")}


@vjp_rule("ReduceSum")
def reduce_sum(b, node, dys, wanted):
    """``dX = dY`` broadcast back over the reduced axes."""
    _only(node, wanted)
    a = _attrs(node)
    x, y = node.input[0], node.output[0]
    rank = len(b.shape(x))
    axes = [int(v) for v in _const(b, node.input[1], "axes", node)] \
        if len(node.input) > 1 and node.input[1] else list(a.get("axes", []))
    if not axes and a.get("noop_with_empty_axes", 0):
        return {x: dys[y]}
    axes = sorted(ax % rank for ax in axes) if axes else list(range(rank))
    dy = dys[y]
    if not a.get("keepdims", 1):
        dy = b.unsqueeze(dy, [ax + 1 for ax in axes])
    return {x: b.node("Expand", [dy, b.k_shape(x)], "spread")}


@vjp_rule("Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or")
def no_gradient(b, node, dys, wanted):
    """Boolean or integer outputs (masks, shapes): no gradient flows back through them."""
    return {}


@vjp_rule("Cast")
def cast(b, node, dys, wanted):
    """Between float types: ``dX = dY`` cast back to ``X``'s type. From or to a non-float type (an
    index, a shape, a mask): no gradient."""
    x, y = node.input[0], node.output[0]
    source, target = _elem_type(b, x), _attrs(node)["to"]
    if source not in _FLOATS or target not in _FLOATS:
        return {}
    if source == target:
        return {x: dys[y]}
    return {x: b.node("Cast", [dys[y]], "cast", to=source)}

