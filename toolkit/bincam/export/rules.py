"""VJP rules, one per ONNX op type: ``rule(builder, node, {output: dY}, wanted) → {input: dX}``.

Cotangents are ``[K, *forward shape]``; forward tensors ``[B, …]`` broadcast against them. Only
inputs on the activation→logits path (``wanted``) get gradients; weights are constants. A rule is
registered in ``RULES`` by ``@vjp_rule(op_type, …)`` on its definition.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import helper

from bincam.errors import BincamError

Rule = Callable[..., dict[str, str]]
RULES: dict[str, Rule] = {}


def vjp_rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register the decorated function as the rule of ``op_types``; a second rule for one raises."""
    def register(rule: Rule) -> Rule:
        for op in op_types:
            if op in RULES or op_types.count(op) > 1:
                raise ValueError(f"two VJP rules for op {op}: {RULES.get(op, rule).__name__} and "
                                 f"{rule.__name__}")
        RULES.update(dict.fromkeys(op_types, rule))
        return rule
    return register


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _const(b, name: str, what: str, node) -> np.ndarray:
    """The constant value of input ``name`` (folded where it is computed from constants)."""
    value = b.constant(name)
    if value is None:
        raise BincamError(f"{node.op_type} node {node.name!r}: input {name!r} ({what}) is "
                          "computed from the model's input; the gradient export needs it constant")
    return value


def _only(node, wanted, index=0):
    bad = [w for w in wanted if w != node.input[index]]
    if bad:
        raise BincamError(f"{node.op_type} node {node.name!r}: gradient with respect to input "
                          f"{bad[0]!r} is not supported")


@vjp_rule("Identity")
def identity(b, node, dys, wanted):
    """``dX = dY``."""
    return {node.input[0]: dys[node.output[0]]}


@vjp_rule("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape_back(b, node, dys, wanted):
    """Flatten, Reshape, Squeeze, Unsqueeze: reshape the cotangent to the input's shape."""
    _only(node, wanted)
    x = node.input[0]
    return {x: b.node("Reshape", [dys[node.output[0]], b.k_shape(x)], "reshape")}


@vjp_rule("Relu")
def relu(b, node, dys, wanted):
    """``dX = dY · 1[Y > 0]``."""
    y = node.output[0]
    positive = b.node("Greater", [y, b.const(0.0, "zero")], "positive")
    return {node.input[0]: b.node("Where", [positive, dys[y], b.const(0.0, "zero")], "relu")}


@vjp_rule("Sigmoid")
def sigmoid(b, node, dys, wanted):
    """``dX = dY · Y · (1 − Y)``."""
    y = node.output[0]
    slope = b.node("Mul", [y, b.node("Sub", [b.const(1.0, "one"), y])], "slope")
    return {node.input[0]: b.node("Mul", [dys[y], slope], "sigmoid")}


def _collect(b, pairs) -> dict:
    """Input → gradient, summing when one tensor feeds several inputs of the node (``x·x``)."""
    out: dict[str, str] = {}
    for name, grad in pairs:
        out[name] = b.node("Add", [out[name], grad], "accumulate") if name in out else grad
    return out


@vjp_rule("Add")
def add(b, node, dys, wanted):
    """``dA = dY`` and ``dB = dY`` (summed over broadcast axes)."""
    dy, y = dys[node.output[0]], node.output[0]
    return _collect(b, [(x, b.unbroadcast(dy, x, y)) for x in node.input if x in wanted])


@vjp_rule("Sub")
def sub(b, node, dys, wanted):
    """``dA = dY`` and ``dB = −dY`` (summed over broadcast axes)."""
    dy, y = dys[node.output[0]], node.output[0]
    pairs = []
    for i, x in enumerate(node.input):
        if x in wanted:
            pairs.append((x, b.unbroadcast(dy if i == 0 else b.node("Neg", [dy], "neg"), x, y)))
    return _collect(b, pairs)


@vjp_rule("Mul")
def mul(b, node, dys, wanted):
    """``dA = dY · B`` and ``dB = dY · A`` (summed over broadcast axes)."""
    dy, y = dys[node.output[0]], node.output[0]
    pairs = []
    for i, x in enumerate(node.input):
        if x in wanted:
            other = node.input[1 - i]
            pairs.append((x, b.unbroadcast(b.node("Mul", [dy, other], "mul"), x, y)))
    return _collect(b, pairs)


@vjp_rule("BatchNormalization")
def batchnorm(b, node, dys, wanted):
    """Inference BatchNorm is affine per channel: ``dX = dY · γ/√(σ² + ε)``."""
    _only(node, wanted)
    eps = _attrs(node).get("epsilon", 1e-5)
    gamma = _const(b, node.input[1], "scale", node)
    var = _const(b, node.input[4], "variance", node)
    rank = len(b.shape(node.input[0]))
    factor = (gamma / np.sqrt(var + eps)).reshape(-1, *([1] * (rank - 2)))
    return {node.input[0]: b.node("Mul", [dys[node.output[0]], b.const(factor, "bn_scale")], "bn")}


@vjp_rule("Gemm")
def gemm(b, node, dys, wanted):
    """``Y = α·A'·B' + βC``: ``dA = α·dY·B'ᵀ`` (B constant, no transA)."""
    _only(node, wanted)
    a = _attrs(node)
    if a.get("transA", 0):
        raise BincamError(f"Gemm node {node.name!r} with transA=1 is not supported")
    w = _const(b, node.input[1], "weight", node)
    w_t = w if a.get("transB", 0) else w.T                      # B'ᵀ as a [N, M] matrix
    w_t = w_t * a.get("alpha", 1.0)
    return {node.input[0]: b.node("MatMul", [dys[node.output[0]], b.const(w_t, "gemm_w")],
                                  "gemm")}


@vjp_rule("Transpose")
def transpose(b, node, dys, wanted):
    """``dX = dY`` transposed by the inverse permutation (the K axis stays first)."""
    perm = _attrs(node)["perm"]
    inverse = list(np.argsort(perm))
    return {node.input[0]: b.node("Transpose", [dys[node.output[0]]], "transpose",
                                  perm=[0] + [p + 1 for p in inverse])}


def _batch_axis_refused(b, node, x: str, axes: list[int], what: str) -> None:
    """A reduction or concatenation over axis 0 is over the batch unless axis 0 has a static
    size (a stack of branches, CrossViT's logits ``[2, B, K]``: the batch is dynamic)."""
    if 0 in axes and b.shape(x)[0] is None:
        raise BincamError(f"{node.op_type} node {node.name!r} {what} the batch axis (axis 0 of "
                          f"{x!r}); bincam explains each image on its own, so a model that mixes "
                          "the images of a batch cannot be explained")


def _spread_mean(b, node, dy, axes: list[int], keepdims: bool):
    """Gradient of a mean over ``axes`` of the input: ``dY / n``, broadcast back."""
    x = node.input[0]
    dims = b.shape(x)
    if any(dims[a] is None for a in axes):
        raise BincamError(f"{node.op_type} node {node.name!r}: the size of a reduced axis of "
                          f"{x!r} is not static ({dims})")
    count = int(np.prod([dims[a] for a in axes]))
    if not keepdims:
        dy = b.unsqueeze(dy, [a + 1 for a in axes])
    scaled = b.node("Mul", [dy, b.const(1.0 / count, "inv_count")], "mean")
    return {x: b.node("Expand", [scaled, b.k_shape(x)], "spread")}


@vjp_rule("GlobalAveragePool")
def global_average_pool(b, node, dys, wanted):
    """``dX = dY / n`` broadcast over the ``n`` spatial positions."""
    rank = len(b.shape(node.input[0]))
    return _spread_mean(b, node, dys[node.output[0]], list(range(2, rank)), True)


@vjp_rule("ReduceMean")
def reduce_mean(b, node, dys, wanted):
    """``dX = dY / n`` broadcast over the ``n`` reduced elements."""
    _only(node, wanted)
    a = _attrs(node)
    rank = len(b.shape(node.input[0]))
    if len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in _const(b, node.input[1], "axes", node)]
    else:
        axes = a.get("axes", list(range(rank)))
    axes = sorted(ax % rank for ax in axes)
    _batch_axis_refused(b, node, node.input[0], axes, "reduces over")
    return _spread_mean(b, node, dys[node.output[0]], axes, bool(a.get("keepdims", 1)))


def _transpose_conv(b, node, dy, x, weight: str, kernel, group: int):
    """ConvTranspose with the forward's geometry; output padding restores the input's size."""
    a = _attrs(node)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise BincamError(f"{node.op_type} node {node.name!r}: auto_pad is not supported")
    y = node.output[0]
    n = len(kernel)
    strides = a.get("strides", [1] * n)
    dil = a.get("dilations", [1] * n)
    pads = a.get("pads", [0] * 2 * n)
    in_dims, out_dims = b.static(x)[1:], b.static(y)[1:]
    extra = [in_dims[i] - ((out_dims[i] - 1) * strides[i] - pads[i] - pads[i + n]
                           + dil[i] * (kernel[i] - 1) + 1) for i in range(n)]
    if any(e < 0 or e >= max(strides[i], dil[i]) for i, e in enumerate(extra)):
        raise BincamError(f"{node.op_type} node {node.name!r}: cannot invert its geometry")
    flat = b.as_4d(dy, y)
    out = b.node("ConvTranspose", [flat, weight], "conv_t", strides=strides, pads=pads,
                 dilations=dil, group=group, output_padding=extra)
    return b.back_to(out, x)


@vjp_rule("Conv")
def conv(b, node, dys, wanted):
    """``dX = ConvTranspose(dY, W)`` with the same strides, pads, dilations and groups."""
    _only(node, wanted)
    w = _const(b, node.input[1], "weight", node)
    group = _attrs(node).get("group", 1)
    return {node.input[0]: _transpose_conv(b, node, dys[node.output[0]], node.input[0],
                                           b.constant_input(node.input[1]), w.shape[2:], group)}


@vjp_rule("Concat")
def concat(b, node, dys, wanted):
    """``dXᵢ`` is the slice of ``dY`` that ``Xᵢ`` occupies along the axis (its bounds from the
    inputs' shapes at run time where an extent is dynamic, as PiT's class token's)."""
    rank = len(b.shape(node.output[0]))
    axis = _attrs(node)["axis"] % rank
    for x in node.input:
        _batch_axis_refused(b, node, x, [axis], "concatenates along")
    pairs, start = [], 0   # start: an int while every extent so far is static, else a tensor
    for x in node.input:
        size = b.shape(x)[axis]
        if size is not None and isinstance(start, int):
            end = start + size
        else:
            extent = b.const([size], "extent", np.int64) if size is not None else \
                b.node("Gather", [b.node("Shape", [x], "shape"),
                                  b.const([axis], "axis", np.int64)], "extent")
            begin = b.const([start], "s", np.int64) if isinstance(start, int) else start
            end = b.node("Add", [begin, extent], "end")
        if x in wanted:  # one tensor concatenated twice gets both slices
            bounds = [b.const([v], "s", np.int64) if isinstance(v, int) else v
                      for v in (start, end)]
            pairs.append((x, b.node("Slice", [dys[node.output[0]], *bounds,
                                              b.const([axis + 1], "ax", np.int64)], "concat")))
        start = end
    return _collect(b, pairs)


@vjp_rule("Slice")
def slice_(b, node, dys, wanted):
    """``Y = X[s:e:t]`` along each sliced axis (ONNX's clamping): ``dX`` is zero but where ``X``
    was read. Steps of 1 pad ``dY`` back (by the forward shapes where the extent or the end is
    only known at run time); other steps gather ``concat(dY, 0)`` with, for each input position,
    the output position that read it or the zero."""
    _only(node, wanted)
    x, y = node.input[0], node.output[0]
    dims = b.shape(x)
    rank = len(dims)
    starts = _const(b, node.input[1], "starts", node)
    axes = _const(b, node.input[3], "axes", node) if len(node.input) > 3 and node.input[3] \
        else np.arange(len(starts))
    steps = _const(b, node.input[4], "steps", node) if len(node.input) > 4 and node.input[4] \
        else np.ones(len(starts), np.int64)
    ends = b.consts.get(node.input[2])
    dx, pads = dys[y], np.zeros(2 * (rank + 1), np.int64)
    for i, (s, ax, step) in enumerate(zip(starts, axes, steps)):
        ax, s, step = int(ax) % rank, int(s), int(step)
        if ax == 0:
            raise BincamError(f"Slice node {node.name!r} slices the batch axis")
        if step == 0:
            raise BincamError(f"Slice node {node.name!r} has a step of 0, which ONNX forbids")
        n = dims[ax]
        if step == 1 and (n is None or ends is None):
            dx = _pad_at_run_time(b, dx, x, y, ax, s)
            continue
        if ends is None:
            _const(b, node.input[2], "ends", node)  # raises: a step other than 1 needs the ends
        if n is None:
            raise BincamError(f"Slice node {node.name!r}: a step of {step} needs a static extent "
                              f"along axis {ax}")
        read = range(*slice(s, int(ends[i]), step).indices(n))   # ONNX clamps as Python does
        if step == 1:
            pads[ax + 1], pads[ax + rank + 2] = read.start, n - read.start - len(read)
            continue
        source = np.full(n, len(read), np.int64)                   # len(read): the zero slab
        source[list(read)] = np.arange(len(read))
        slab = np.zeros(2 * (rank + 1), np.int64)
        slab[ax + rank + 2] = 1
        dx = b.node("Pad", [dx, b.const(slab, "pads", np.int64)], "slice_zero", mode="constant")
        dx = b.node("Gather", [dx, b.const(source, "source", np.int64)], "slice", axis=ax + 1)
    if pads.any():
        dx = b.node("Pad", [dx, b.const(pads, "pads", np.int64)], "slice", mode="constant")
    return {x: dx}


def _pad_at_run_time(b, dy: str, x: str, y: str, ax: int, start: int) -> str:
    """``dY`` padded back along ``ax`` (step 1, constant ``start``) by pads computed from the
    forward shapes: ``before = clamp(start, 0, n)``, ``after = n − before − m`` (``n``, ``m`` the
    extents of ``X`` and ``Y``)."""
    rank = len(b.shape(x))
    at = b.const([ax], "axis", np.int64)
    n = b.node("Gather", [b.node("Shape", [x], "shape"), at], "extent")
    m = b.node("Gather", [b.node("Shape", [y], "shape"), at], "extent")
    if start >= 0:
        before = b.node("Min", [n, b.const([start], "start", np.int64)], "before")
    else:
        before = b.node("Max", [b.node("Add", [n, b.const([start], "start", np.int64)]),
                                b.const([0], "zero", np.int64)], "before")
    after = b.node("Sub", [b.node("Sub", [n, before]), m], "after")
    parts = [b.const(np.zeros(ax + 1), "pads", np.int64), before,
             b.const(np.zeros(rank), "pads", np.int64), after]
    if rank - ax - 1:
        parts.append(b.const(np.zeros(rank - ax - 1), "pads", np.int64))
    pads = b.node("Concat", parts, "pads", axis=0)
    return b.node("Pad", [dy, pads], "slice", mode="constant")


@vjp_rule("Pad")
def pad(b, node, dys, wanted):
    """``dX`` is the interior of ``dY`` (constant-mode, non-negative pads)."""
    _only(node, wanted)
    a = _attrs(node)
    if a.get("mode", b"constant") not in (b"constant", "constant"):
        raise BincamError(f"Pad node {node.name!r}: only constant padding is supported")
    x = node.input[0]
    dims = b.static(x)
    pads = _const(b, node.input[1], "pads", node).astype(np.int64)
    rank = len(dims) + 1
    if len(node.input) > 3 and node.input[3]:
        full = np.zeros(2 * rank, dtype=np.int64)
        for i, ax in enumerate(_const(b, node.input[3], "axes", node)):
            full[int(ax) % rank], full[int(ax) % rank + rank] = pads[i], pads[i + len(pads) // 2]
        pads = full
    if np.any(pads < 0) or pads[0] or pads[rank]:
        raise BincamError(f"Pad node {node.name!r}: negative or batch-axis pads are not supported")
    starts = [int(pads[i]) for i in range(1, rank)]
    ends = [s + d for s, d in zip(starts, dims)]
    axes = list(range(2, rank + 1))
    return {x: b.node("Slice", [dys[node.output[0]], b.const(starts, "s", np.int64),
                                b.const(ends, "e", np.int64), b.const(axes, "ax", np.int64)],
                      "pad")}


from bincam.export import rules_pool  # noqa: E402,F401 - registers the MaxPool and AveragePool rules
from bincam.export import rules_elementwise  # noqa: E402,F401 - registers the element-wise rules
from bincam.export import rules_tensor  # noqa: E402,F401 - registers the indexing and MatMul rules
from bincam.export import rules_activation  # noqa: E402,F401 - registers the activation rules
from bincam.export import rules_reduce  # noqa: E402,F401 - registers the other reductions
from bincam.export import rules_norm  # noqa: E402,F401 - registers the normalisation rules
from bincam.export import rules_layout  # noqa: E402,F401 - registers Einsum, DepthToSpace, Resize
