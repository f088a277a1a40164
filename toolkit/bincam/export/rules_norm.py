"""VJP rules of the normalisations over a tensor's own statistics: LayerNorm (transformers,
ConvNeXt), InstanceNorm (PoolFormer; torch's GroupNorm exported before opset 21) and the
``GroupNormalization`` op (opsets 18 and 21).

All three are ``Y = X̂·γ + β`` with ``X̂ = (X − μ)·r``, ``r = 1/√(σ² + ε)``, ``μ`` and ``σ²`` the
(biased) mean and variance over some axes; with ``g = dY·γ`` the gradient is
``dX = r·(g − mean(g) − X̂·mean(g·X̂))``, means over the same axes. ``μ`` and ``r`` are recomputed
from ``X`` (TensorRT's normalisation layers have no Mean/InvStdDev outputs).
"""

from __future__ import annotations

import numpy as np

from bincam.errors import BincamError
from bincam.export.rules import _attrs, _const, _only, vjp_rule


def normalized_backward(b, x: str, g: str, axes: list[int], eps: float) -> str:
    """``dX [K, *shape(x)]`` of ``X̂ = (X − μ)·r`` over ``axes`` of ``x``, given ``g = dY·γ``."""
    k_axes = [a + 1 for a in axes]
    centred = b.node("Sub", [x, b.reduce("ReduceMean", x, axes, "mean")], "centred")
    var = b.reduce("ReduceMean", b.node("Mul", [centred, centred], "square"), axes, "var")
    std = b.node("Sqrt", [b.node("Add", [var, b.const(eps, "eps")])], "std")
    r = b.node("Div", [b.const(1.0, "one"), std], "rstd")
    xhat = b.node("Mul", [centred, r], "xhat")
    mean_g = b.reduce("ReduceMean", g, k_axes, "mean_g")
    mean_gx = b.reduce("ReduceMean", b.node("Mul", [g, xhat], "gx"), k_axes, "mean_gx")
    inner = b.node("Sub", [b.node("Sub", [g, mean_g], "g_centred"),
                           b.node("Mul", [xhat, mean_gx], "projection")], "inner")
    return b.node("Mul", [inner, r], "normalized")


@vjp_rule("LayerNormalization")
def layer_norm(b, node, dys, wanted):
    """Statistics over the axes from ``axis`` on; ``γ`` (constant or not) broadcast."""
    _only(node, wanted)
    a = _attrs(node)
    x, y = node.input[0], node.output[0]
    rank = len(b.shape(x))
    first = a.get("axis", -1) % rank
    g = b.node("Mul", [dys[y], node.input[1]], "g")
    return {x: normalized_backward(b, x, g, list(range(first, rank)), a.get("epsilon", 1e-5))}


@vjp_rule("InstanceNormalization")
def instance_norm(b, node, dys, wanted):
    """Statistics per sample and channel over the spatial axes; ``γ [C]`` constant."""
    _only(node, wanted)
    x, y = node.input[0], node.output[0]
    rank = len(b.shape(x))
    gamma = _const(b, node.input[1], "scale", node)
    g = b.node("Mul", [dys[y], b.const(gamma.reshape(-1, *[1] * (rank - 2)), "gamma")], "g")
    eps = _attrs(node).get("epsilon", 1e-5)
    return {x: normalized_backward(b, x, g, list(range(2, rank)), eps)}


@vjp_rule("GroupNormalization")
def group_norm(b, node, dys, wanted):
    """Statistics per sample over each group of ``C/G`` channels and the spatial axes; ``γ``
    constant, per channel (opset 21) or per group (opset 18, repeated over its channels)."""
    _only(node, wanted)
    a = _attrs(node)
    x, y = node.input[0], node.output[0]
    dims = b.static(x)
    groups, channels = int(a["num_groups"]), dims[0]
    if channels % groups:
        raise BincamError(f"GroupNormalization node {node.name!r}: {channels} channels do not "
                          f"split into {groups} groups")
    gamma = _const(b, node.input[1], "scale", node).reshape(-1)
    if gamma.size == groups and groups != channels:
        gamma = np.repeat(gamma, channels // groups)
    g = b.node("Mul", [dys[y], b.const(gamma.reshape(-1, *[1] * (len(dims) - 1)), "gamma")], "g")
    size = int(np.prod(dims)) // groups
    xg = b.node("Reshape", [x, b.const([-1, groups, size], "groups", np.int64)], "x_groups")
    gg = b.node("Reshape", [g, b.const([b.k, -1, groups, size], "groups", np.int64)], "g_groups")
    dx = normalized_backward(b, xg, gg, [2], a.get("epsilon", 1e-5))
    return {x: b.back_to(dx, x)}
