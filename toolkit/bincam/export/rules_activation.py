"""VJP rules of the activation ops timm's and torchvision's nets export besides ReLU: the leaky and
exponential units, the smooth ones (Softplus, Mish, Softsign, the opset-20 ``Gelu`` op) and
``LogSoftmax``. Each gradient is PyTorch's autograd formula for the torch op exported to it, kinks
included (``x = 0`` takes the negative side's slope, as ``leaky_relu``, ``prelu`` and ``elu``).
"""

from __future__ import annotations

import numpy as np

from bincam.export.rules import _attrs, _const, _only, vjp_rule


def _scaled(b, node, dys, slope: str) -> dict:
    """``dX = dY · slope`` for the node's first input."""
    return {node.input[0]: b.node("Mul", [dys[node.output[0]], slope], node.op_type.lower())}


def _positive_or(b, x: str, positive: str, otherwise: str) -> str:
    """``positive`` where ``X > 0``, else ``otherwise`` (so ``X = 0`` takes ``otherwise``)."""
    return b.node("Where", [b.node("Greater", [x, b.const(0.0, "zero")], "positive"), positive,
                            otherwise], "slope")


@vjp_rule("LeakyRelu")
def leaky_relu(b, node, dys, wanted):
    """``dX = dY`` for ``X > 0``, ``α·dY`` for ``X ≤ 0``."""
    alpha = float(_attrs(node).get("alpha", 0.01))
    x = node.input[0]
    return _scaled(b, node, dys, _positive_or(b, x, b.const(1.0, "one"), b.const(alpha, "alpha")))


@vjp_rule("PRelu")
def prelu(b, node, dys, wanted):
    """``dX = dY`` for ``X > 0``, ``slope·dY`` for ``X ≤ 0`` (the slope constant, broadcast)."""
    _only(node, wanted)
    _const(b, node.input[1], "slope", node)
    return _scaled(b, node, dys, _positive_or(b, node.input[0], b.const(1.0, "one"),
                                              node.input[1]))


def _exponential(b, node, dys, alpha: float, scale: float) -> dict:
    """``Y = s·X`` for ``X > 0``, ``s·α(eˣ − 1)`` else: ``dX = dY·s`` or ``dY·s·α·eˣ``."""
    x = node.input[0]
    negative = b.node("Mul", [b.node("Exp", [x], "exp"), b.const(scale * alpha, "alpha")], "neg")
    return _scaled(b, node, dys, _positive_or(b, x, b.const(scale, "scale"), negative))


@vjp_rule("Elu")
def elu(b, node, dys, wanted):
    """``dX = dY`` for ``X > 0``, ``dY·α·eˣ`` for ``X ≤ 0``."""
    return _exponential(b, node, dys, float(_attrs(node).get("alpha", 1.0)), 1.0)


@vjp_rule("Selu")
def selu(b, node, dys, wanted):
    """``dX = γ·dY`` for ``X > 0``, ``dY·γ·α·eˣ`` for ``X ≤ 0``."""
    a = _attrs(node)
    return _exponential(b, node, dys, float(a.get("alpha", 1.67326319217681884765625)),
                        float(a.get("gamma", 1.05070102214813232421875)))


@vjp_rule("Softplus")
def softplus(b, node, dys, wanted):
    """``Y = log(1 + eˣ)``: ``dX = dY·σ(X)``."""
    return _scaled(b, node, dys, b.node("Sigmoid", [node.input[0]], "sigmoid"))


@vjp_rule("Mish")
def mish(b, node, dys, wanted):
    """``Y = X·tanh(softplus(X))``: ``dX = dY·(t + X·σ(X)·(1 − t²))``, ``t = tanh(softplus(X))``
    (PyTorch's formula)."""
    x = node.input[0]
    t = b.node("Tanh", [b.node("Softplus", [x], "softplus")], "tanh")
    one_minus = b.node("Sub", [b.const(1.0, "one"), b.node("Mul", [t, t], "t2")], "sech2")
    xs = b.node("Mul", [x, b.node("Sigmoid", [x], "sigmoid")], "x_sigmoid")
    return _scaled(b, node, dys, b.node("Add", [t, b.node("Mul", [xs, one_minus], "part")],
                                        "slope"))


@vjp_rule("Softsign")
def softsign(b, node, dys, wanted):
    """``Y = X/(1 + |X|)``: ``dX = dY/(1 + |X|)²``."""
    d = b.node("Add", [b.const(1.0, "one"), b.node("Abs", [node.input[0]], "abs")], "denominator")
    return {node.input[0]: b.node("Div", [dys[node.output[0]], b.node("Mul", [d, d], "square")],
                                  "softsign")}


@vjp_rule("Gelu")
def gelu(b, node, dys, wanted):
    """``approximate="none"``: ``dX = dY·(Φ(X) + X·φ(X))``, Φ, φ the normal CDF and density.
    ``"tanh"``: ``u = √(2/π)(X + 0.044715X³)``, ``t = tanh u``:
    ``dX = dY·(½(1 + t) + ½X(1 − t²)·√(2/π)(1 + 3·0.044715X²))`` (PyTorch's formulas)."""
    x = node.input[0]
    approximate = _attrs(node).get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    square = b.node("Mul", [x, x], "square")
    if approximate == "tanh":
        c, k = np.sqrt(2.0 / np.pi), 0.044715
        inner = b.node("Add", [b.const(1.0, "one"), b.node("Mul", [square, b.const(k, "k")])])
        u = b.node("Mul", [b.node("Mul", [x, inner], "cubic"), b.const(c, "c")], "u")
        t = b.node("Tanh", [u], "tanh")
        left = b.node("Mul", [b.node("Add", [t, b.const(1.0, "one")]), b.const(0.5, "half")])
        du = b.node("Add", [b.const(c, "c"), b.node("Mul", [square, b.const(3 * k * c, "k3c")])])
        sech2 = b.node("Sub", [b.const(1.0, "one"), b.node("Mul", [t, t], "t2")], "sech2")
        right = b.node("Mul", [b.node("Mul", [x, b.const(0.5, "half")]),
                               b.node("Mul", [sech2, du])], "right")
        return _scaled(b, node, dys, b.node("Add", [left, right], "slope"))
    cdf = b.node("Mul", [b.node("Add", [b.node("Erf", [b.node(
        "Mul", [x, b.const(1.0 / np.sqrt(2.0), "inv_sqrt2")])], "erf"), b.const(1.0, "one")]),
        b.const(0.5, "half")], "cdf")
    pdf = b.node("Mul", [b.node("Exp", [b.node("Mul", [square, b.const(-0.5, "minus_half")])]),
                         b.const(1.0 / np.sqrt(2.0 * np.pi), "inv_sqrt_2pi")], "pdf")
    return _scaled(b, node, dys, b.node("Add", [cdf, b.node("Mul", [x, pdf])], "slope"))


@vjp_rule("LogSoftmax")
def log_softmax(b, node, dys, wanted):
    """``Y = X − log Σ eˣ`` along ``axis`` (opset ≥ 13: one axis, default −1):
    ``dX = dY − eʸ·Σ_axis dY``."""
    x, y = node.input[0], node.output[0]
    axis = _attrs(node).get("axis", -1) % len(b.shape(x))
    total = b.reduce("ReduceSum", dys[y], [axis + 1], "total")
    return {x: b.node("Sub", [dys[y], b.node("Mul", [b.node("Exp", [y], "softmax"), total])],
                      "log_softmax")}
