"""VJP rules of the reductions beyond sum and mean (``ReduceL2``, ``ReduceSumSquare``,
``ReduceMax``, ``ReduceMin``) and of the variadic ``Mean``.

``ReduceMax``/``ReduceMin`` send ``dY`` to one element per reduced group: the first, in row-major
order over the reduced axes, equal to the extremum — the tie convention of the MaxPool rule and of
``torch.max(x, dim)`` (``torch.amax`` splits ties evenly instead; exporters map both here).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from bincam.errors import BincamError
from bincam.export.rules import _attrs, _collect, _const, _only, vjp_rule


def reduced_axes(b, node) -> tuple[list[int] | None, bool]:
    """``(axes, keepdims)`` of a Reduce* node, axes as an attribute or a constant input, sorted
    and non-negative; ``None`` for ``noop_with_empty_axes`` with no axes (the identity)."""
    a = _attrs(node)
    rank = len(b.shape(node.input[0]))
    axes = [int(v) for v in _const(b, node.input[1], "axes", node)] \
        if len(node.input) > 1 and node.input[1] else list(a.get("axes", []))
    if not axes and a.get("noop_with_empty_axes", 0):
        return None, True
    return (sorted(ax % rank for ax in axes) if axes else list(range(rank))), \
        bool(a.get("keepdims", 1))


def _reduced(b, node) -> tuple[list[int], bool]:
    """``reduced_axes``, refusing ``noop_with_empty_axes`` with no axes (whose meaning for
    ReduceL2 and ReduceSumSquare the ONNX spec leaves open)."""
    axes, keepdims = reduced_axes(b, node)
    if axes is None:
        raise BincamError(f"{node.op_type} node {node.name!r}: noop_with_empty_axes with no axes "
                          "is not supported")
    return axes, keepdims


def _kept(b, tensor: str, axes: list[int], keepdims: bool, with_k: bool) -> str:
    """A reduced tensor with its reduced axes back as size 1 (``with_k``: a cotangent, its axes
    shifted by the K axis)."""
    if keepdims:
        return tensor
    return b.unsqueeze(tensor, [a + 1 for a in axes] if with_k else axes)


@vjp_rule("ReduceSumSquare")
def reduce_sum_square(b, node, dys, wanted):
    """``Y = Σ X²``: ``dX = 2X·dY``."""
    _only(node, wanted)
    x, y = node.input[0], node.output[0]
    axes, keepdims = _reduced(b, node)
    dy = _kept(b, dys[y], axes, keepdims, True)
    return {x: b.node("Mul", [dy, b.node("Mul", [x, b.const(2.0, "two")], "twice")], "sum_sq")}


@vjp_rule("ReduceL2")
def reduce_l2(b, node, dys, wanted):
    """``Y = √(Σ X²)``: ``dX = X·dY/Y``, and 0 where ``Y = 0`` (PyTorch's ``norm`` there)."""
    _only(node, wanted)
    x, y = node.input[0], node.output[0]
    axes, keepdims = _reduced(b, node)
    norm = _kept(b, y, axes, keepdims, False)
    zero = b.node("Equal", [norm, b.const(0.0, "zero")], "is_zero")
    safe = b.node("Where", [zero, b.const(1.0, "one"), norm], "safe_norm")
    ratio = b.node("Div", [_kept(b, dys[y], axes, keepdims, True), safe], "ratio")
    ratio = b.node("Where", [zero, b.const(0.0, "zero"), ratio], "ratio")
    return {x: b.node("Mul", [ratio, x], "l2")}


def _first(b, hits: str, x: str, axes: list[int]) -> str:
    """``hits`` (float 0/1, shaped as ``x``) kept at the first 1 of each group over ``axes``,
    row-major: a ``CumSum`` along the one axis, or along the reduced axes moved last and
    flattened."""
    rank = len(b.shape(x))
    if len(axes) == 1:
        count = b.node("CumSum", [hits, b.const(axes[0], "axis", np.int64)], "count")
    else:
        if 0 in axes:
            raise BincamError("a maximum over the batch axis and others is not supported")
        dims = b.static(x)
        kept = [a for a in range(rank) if a not in axes]
        perm = kept + axes
        moved = b.node("Transpose", [hits], "to_last", perm=perm)
        n = int(np.prod([dims[a - 1] for a in axes]))
        flat = b.node("Reshape", [moved, b.const([-1, *[dims[a - 1] for a in kept[1:]], n],
                                                 "shape", np.int64)], "flat")
        count = b.node("CumSum", [flat, b.const(len(kept), "axis", np.int64)], "count")
        count = b.node("Reshape", [count, b.node("Shape", [moved], "shape")], "unflat")
        count = b.node("Transpose", [count], "from_last",
                       perm=[int(p) for p in np.argsort(perm)])
    first = b.node("Equal", [count, b.const(1.0, "one")], "is_first")
    return b.node("Mul", [hits, b.node("Cast", [first], "first", to=TensorProto.FLOAT)], "first")


@vjp_rule("ReduceMax", "ReduceMin")
def reduce_extremum(b, node, dys, wanted):
    """``dX = dY`` at the first element of each reduced group equal to ``Y``, 0 elsewhere."""
    _only(node, wanted)
    x, y = node.input[0], node.output[0]
    axes, keepdims = reduced_axes(b, node)
    if axes is None:
        return {x: dys[y]}
    hits = b.node("Cast", [b.node("Equal", [x, _kept(b, y, axes, keepdims, False)], "is_ext")],
                  "hit", to=TensorProto.FLOAT)
    mask = _first(b, hits, x, axes)
    return {x: b.node("Mul", [_kept(b, dys[y], axes, keepdims, True), mask], "extremum")}


@vjp_rule("Mean")
def mean(b, node, dys, wanted):
    """``Y = (X₁ + … + Xₙ)/n``: ``dXᵢ = dY/n`` (summed over broadcast axes)."""
    y = node.output[0]
    share = b.node("Mul", [dys[y], b.const(1.0 / len(node.input), "inv_n")], "mean")
    return _collect(b, [(x, b.unbroadcast(share, x, y)) for x in node.input if x in wanted])
