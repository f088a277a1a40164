"""VJP rules of indexing, splitting and matrix products — the ops vision transformers add
(class-token pick, q/k/v selection, attention ``Q·Kᵀ`` and ``P·V``); their LayerNorm is in
``rules_norm.py``."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from bincam.errors import BincamError
from bincam.export.rules import _attrs, _collect, _const, _only, vjp_rule


@vjp_rule("Gather")
def gather(b, node, dys, wanted):
    """``Y = take(X, I, axis)``, constant indices ``I`` of any rank (``Y``'s ``I`` axes flattened
    to one of ``m``): ``dX`` is zero but for ``dX[…, Iⱼ, …] += dY[…, j, …]`` — negative indices
    count from the end, repeated ones add up. One index along a static axis (the class-token pick
    ``x[:, 0]``) pads ``dY`` back; otherwise ``dY`` times the one-hot ``[m, N]`` matrix of ``I``,
    built at run time from ``N = shape(X)[axis]`` where that extent is dynamic."""
    _only(node, wanted)
    x, y = node.input[0], node.output[0]
    rank = len(b.shape(x))
    axis = _attrs(node).get("axis", 0) % rank
    size = b.shape(x)[axis]
    idx = np.asarray(_const(b, node.input[1], "indices", node), dtype=np.int64)
    flat = idx.ravel()
    dy = dys[y]
    if idx.ndim == 0:
        dy = b.unsqueeze(dy, [axis + 1])
    elif idx.ndim > 1:  # [K, *lead, *I, *trail] → [K, *lead, m, *trail]
        shape = b.k_shape(x)
        lead = b.node("Slice", [shape, b.const([0], "s", np.int64),
                                b.const([axis + 1], "e", np.int64)], "lead")
        trail = b.node("Slice", [shape, b.const([axis + 2], "s", np.int64),
                                 b.const([rank + 1], "e", np.int64)], "trail")
        shape = b.node("Concat", [lead, b.const([flat.size], "m", np.int64), trail], "rows",
                       axis=0)
        dy = b.node("Reshape", [dy, shape], "rows")
    if size is not None and flat.size == 1:
        i = int(flat[0]) % size
        pads = np.zeros(2 * (rank + 1), dtype=np.int64)
        pads[axis + 1], pads[axis + rank + 2] = i, size - 1 - i
        return {x: b.node("Pad", [dy, b.const(pads, "pads", np.int64)], "gather", mode="constant")}
    if size is not None:
        one_hot = b.const(np.eye(size, dtype=np.float32)[flat % size], "one_hot")   # [m, N]
    else:
        one_hot = _one_hot_at_run_time(b, x, axis, flat)
    if axis == rank - 1:
        return {x: b.node("MatMul", [dy, one_hot], "gather")}
    perm = [i for i in range(rank + 1) if i != axis + 1] + [axis + 1]   # the axis last
    spread = b.node("MatMul", [b.node("Transpose", [dy], "to_last", perm=perm), one_hot], "gather")
    return {x: b.node("Transpose", [spread], "from_last", perm=[int(p) for p in np.argsort(perm)])}


def _one_hot_at_run_time(b, x: str, axis: int, flat: np.ndarray) -> str:
    """The ``[m, N]`` one-hot matrix of the indices ``flat`` along ``X``'s ``axis`` whose extent
    ``N`` is known at run time only: ``1[Iⱼ + N·1[Iⱼ < 0] = range(N)ᵢ]``."""
    n = b.node("Gather", [b.node("Shape", [x], "shape"), b.const(axis, "axis", np.int64)],
               "extent")                                                          # scalar N
    positions = b.node("Range", [b.const(0, "zero", np.int64), n, b.const(1, "one", np.int64)],
                       "positions")                                               # [N]
    wrapped = b.node("Add", [b.const(flat[:, None], "indices", np.int64),
                             b.node("Mul", [b.const((flat < 0)[:, None], "negative", np.int64),
                                            n])], "indices")                      # [m, 1]
    hits = b.node("Equal", [wrapped, positions], "hits")
    return b.node("Cast", [hits], "one_hot", to=TensorProto.FLOAT)


@vjp_rule("Split")
def split(b, node, dys, wanted):
    """``dX`` is the outputs' cotangents concatenated along the axis, zeros for outputs that do
    not reach the logits (the sizes come from the outputs, whether ``split`` is an input, an
    attribute or ``num_outputs``)."""
    _only(node, wanted)
    axis = _attrs(node).get("axis", 0) % len(b.shape(node.input[0]))
    zero = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])
    parts = [dys[out] if out in dys else
             b.node("ConstantOfShape", [b.k_shape(out)], "zeros", value=zero)
             for out in node.output]
    return {node.input[0]: b.node("Concat", parts, "split", axis=axis + 1)}


def _sum_to(b, cot: str, target: str, full: list) -> str:
    """``cot [K, *full]`` summed over the axes that broadcasting ``target`` to ``full`` added."""
    t = b.shape(target)
    if t == full:
        return cot
    t_full = [1] * (len(full) - len(t)) + list(t)
    axes = [i + 1 for i, (a, f) in enumerate(zip(t_full, full)) if a == 1 and f != 1]
    if axes:
        cot = b.reduce("ReduceSum", cot, axes, "unbroadcast")
    return b.node("Reshape", [cot, b.k_shape(target)], "unbroadcast")


def _swapped(b, name: str) -> str:
    """``name`` with its last two axes swapped: a constant here, once; a tensor by a node."""
    if name in b.consts:
        return b.const(np.swapaxes(b.consts[name], -1, -2), "matmul_t")
    rank = len(b.shape(name))
    return b.node("Transpose", [name], "matmul_t", perm=[*range(rank - 2), rank - 1, rank - 2])


@vjp_rule("MatMul")
def matmul(b, node, dys, wanted):
    """``Y = A·B`` (ranks ≥ 2, leading axes broadcast; either or both on the path, as attention's
    ``Q·Kᵀ`` and ``P·V``): ``dA = dY·Bᵀ``, ``dB = Aᵀ·dY`` (ᵀ: the last two axes swapped), each
    summed over the leading axes broadcasting added."""
    (a, w), y = node.input, node.output[0]
    if len(b.shape(a)) < 2 or len(b.shape(w)) < 2:
        raise BincamError(f"MatMul node {node.name!r}: 1-D operands are not supported")
    dy, lead, pairs = dys[y], b.shape(y)[:-2], []
    if a in wanted:
        grad = b.node("MatMul", [dy, _swapped(b, w)], "matmul")
        pairs.append((a, _sum_to(b, grad, a, lead + b.shape(a)[-2:])))
    if w in wanted:
        grad = b.node("MatMul", [_swapped(b, a), dy], "matmul")
        pairs.append((w, _sum_to(b, grad, w, lead + b.shape(w)[-2:])))
    return _collect(b, pairs)


@vjp_rule("GatherND")
def gather_nd(b, node, dys, wanted):
    """Constant indices ``I [*L, *M, q]`` into ``X [*L, *D, *R]`` (``L`` the ``batch_dims``
    axes, ``D`` the ``q`` indexed ones): a one-hot selection ``S [P, M, N]`` (``P = ∏L``,
    ``N = ∏D``), so ``dX = Sᵀ·dY`` over the flattened ``D`` — repeated indices add up. ``L`` and
    ``D`` must be static (exporters move the batch axis into ``R`` first)."""
    _only(node, wanted)
    x = node.input[0]
    idx = np.asarray(_const(b, node.input[1], "indices", node), dtype=np.int64)
    batch_dims = int(_attrs(node).get("batch_dims", 0))
    q = idx.shape[-1]
    dims = b.shape(x)
    lead, indexed = dims[:batch_dims], dims[batch_dims:batch_dims + q]
    if any(d is None for d in lead + indexed):
        raise BincamError(f"GatherND node {node.name!r}: its indexed and batch_dims axes must be "
                          "static")
    p, n = int(np.prod(lead)), int(np.prod(indexed))
    rows = idx.reshape(p, -1, q)                                          # [P, M, q]
    flat = np.ravel_multi_index(tuple(np.mod(rows[..., i], indexed[i]) for i in range(q)),
                                indexed)                                  # [P, M]
    select_t = np.zeros((p, n, rows.shape[1]), np.float32)                # Sᵀ [P, N, M]
    for i in range(p):
        np.add.at(select_t[i], (flat[i], np.arange(rows.shape[1])), 1.0)
    dy = b.node("Reshape", [dys[node.output[0]], b.const([b.k, p, rows.shape[1], -1], "shape",
                                                         np.int64)], "rows")
    spread = b.node("MatMul", [b.const(select_t, "select_t"), dy], "gather_nd")
    return {x: b.back_to(spread, x)}
