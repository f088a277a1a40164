"""ONNX node builders for the explaining graph: the six CAM methods, dense and factored, written
as standard ONNX ops (MatMul, ReduceSum/Mean, Relu, Where, Sign …; all on TensorRT's list).

Each builder mirrors its NumPy twin in ``core.methods`` (same formulas, same eps), so the graph's
raw maps ``[B,K,h,w]`` equal the core's up to float32 rounding. Signs ``s`` enter where the
method is linear in the gradient as a last factor (``s·Σ`` is exactly ``Σ s·`` for ``s ∈ {−1,0,1}``),
saving a pass over the K-fold gradient tensor.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bincam.core.methods import PLUSPLUS_EPS, XGRAD_EPS


class OnnxBuilder:
    """Appends nodes and float32 constants to a graph, with opset-aware Reduce/Unsqueeze."""

    def __init__(self, model: onnx.ModelProto, prefix: str = "bincam/explain"):
        self.graph, self.prefix, self._count = model.graph, prefix, 0
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          18)

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, hint: str | None = None, **attrs) -> str:
        out = self._name(hint or op_type)
        self.graph.node.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, value, hint: str = "c", dtype=np.float32) -> str:
        name = self._name(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype),
                                                              name))
        return name

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: bool = True) -> str:
        """``Reduce*`` over ``axes``: axes as an input from opset 18 (13 for ReduceSum)."""
        since = 13 if op_type == "ReduceSum" else 18
        if self.opset >= since:
            return self.op(op_type, x, self.const(axes, "axes", np.int64), keepdims=int(keepdims))
        return self.op(op_type, x, axes=axes, keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", x, self.const(axes, "axes", np.int64))
        return self.op("Unsqueeze", x, axes=axes)

    def output(self, name: str, source: str, elem_type: int, shape: list) -> None:
        """Expose ``source`` as graph output ``name`` (an Identity) with its declared type."""
        self.graph.node.append(helper.make_node("Identity", [source], [name],
                                                name=f"{self.prefix}/{name}"))
        self.graph.output.append(helper.make_tensor_value_info(name, elem_type, shape))


class MethodGraph:
    """The CAM methods over one activation ``a [B,C,h,w]`` and signs ``s [B,K]`` (or None for
    ``s ≡ 1``). ``project(w, x)`` is ``Σ_c w[…,k,c]·x[b,c,i,j]`` as one MatMul."""

    def __init__(self, b: OnnxBuilder, a: str, sign: str | np.ndarray | None, k: int,
                 chw: tuple[int, int, int], dtype=np.float32):
        """``sign``: a ``[B,K]`` tensor, a constant ``[1,K]`` array, or None (``s ≡ 1``).
        ``dtype``: the type of the tensors given (float32, or float64 for ``cam_precision``)."""
        self.b, self.a, self.k, self.dt = b, a, k, np.dtype(dtype)
        self.c, self.h, self.w = chw
        if isinstance(sign, np.ndarray):
            self.sign = self.num(sign, "sign")
            self.s4 = self.num(sign[:, :, None, None], "sign")              # [1,K,1,1]
            self.s5 = self.num(sign[:, :, None, None, None], "sign")        # [1,K,1,1,1]
        else:
            self.sign = sign
            self.s4 = b.unsqueeze(sign, [2, 3]) if sign else None          # [B,K,1,1]
            self.s5 = b.unsqueeze(sign, [2, 3, 4]) if sign else None       # [B,K,1,1,1]

    def num(self, value, hint: str) -> str:
        """A constant in the tensors' type."""
        return self.b.const(value, hint, self.dt)

    def project(self, weight: str, x: str) -> str:
        b = self.b
        flat = b.op("Reshape", x, b.const([0, self.c, self.h * self.w], "shape", np.int64))
        return b.op("Reshape", b.op("MatMul", weight, flat),
                    b.const([0, self.k, self.h, self.w], "shape", np.int64))

    def signed(self, x: str) -> str:
        """``s·x`` for maps ``[B,K,h,w]``."""
        return x if self.s4 is None else self.b.op("Mul", self.s4, x)

    def by_sign(self, pos: str, neg: str) -> str:
        """``pos`` where ``s > 0``, ``neg`` where ``s < 0``, else ``0·pos + 0·s``: 0 for
        ``s = 0``, NaN where a NaN activation reached the pixel or ``s`` is NaN (core's
        ``_signed``, the dense form and the CUDA kernel do the same)."""
        b = self.b
        if self.s4 is None:
            return pos
        zero = self.num(0.0, "zero")
        rest = b.op("Add", b.op("Mul", zero, pos), b.op("Mul", zero, self.s4))
        inner = b.op("Where", b.op("Less", self.s4, zero), neg, rest)
        return b.op("Where", b.op("Greater", self.s4, zero), pos, inner)

    def alpha(self, g: str, g2: str, den: str) -> str:
        """Grad-CAM++'s ``α = g²/den``, 0 where ``g = 0`` (as the core: a NaN ``Σ_hw A`` of a
        channel then stays out of the maps whose gradient there is 0)."""
        zero = self.num(0.0, "zero")
        return self.b.op("Where", self.b.op("Equal", g, zero), zero, self.b.op("Div", g2, den))

    # dense gradients g [B,K,C,h,w] (∂z/∂A, unsigned) ---------------------------------------
    def dense(self, method: str, g: str) -> str:
        b, a1 = self.b, self.b.unsqueeze(self.a, [1])                    # [B,1,C,h,w]
        if method == "gradcam":
            return self.signed(self.project(b.reduce("ReduceMean", g, [3, 4], False), self.a))
        if method == "hirescam":
            return self.signed(b.reduce("ReduceSum", b.op("Mul", g, a1), [2], False))
        gs = g if self.s5 is None else b.op("Mul", self.s5, g)
        if method == "gradcam-elementwise":
            return b.reduce("ReduceSum", b.op("Relu", b.op("Mul", gs, a1)), [2], False)
        if method == "xgradcam":
            num = b.reduce("ReduceSum", b.op("Mul", g, a1), [3, 4], False)       # [B,K,C]
            den = b.op("Add", b.unsqueeze(b.reduce("ReduceSum", self.a, [2, 3], False), [1]),
                       self.num(XGRAD_EPS, "eps"))                                 # [B,1,C]
            return self.signed(self.project(b.op("Div", num, den), self.a))
        if method == "gradcam++":
            g2 = b.op("Mul", gs, gs)
            sum_a = b.unsqueeze(b.reduce("ReduceSum", self.a, [2, 3], False), [1, 3, 4])
            den = b.op("Add", b.op("Add", b.op("Mul", self.num(2.0, "two"), g2),
                                   b.op("Mul", sum_a, b.op("Mul", g2, gs))),
                       self.num(PLUSPLUS_EPS, "eps"))
            weight = b.reduce("ReduceSum", b.op("Mul", b.op("Relu", gs), self.alpha(gs, g2, den)),
                              [3, 4], False)
            return self.project(weight, self.a)
        if method == "layercam":
            return b.reduce("ReduceSum", b.op("Mul", b.op("Relu", gs), a1), [2], False)
        raise ValueError(method)

    # factored gradients s·W[k,c]·M with M = 1[A > 0] (mask_positive) or ones -----------------
    def factored(self, method: str, w: str, mask_positive: bool) -> str:
        """``w``: the channel weights ``W [K,C]`` (a tensor of the graph)."""
        b, a = self.b, self.a
        mask = b.op("Cast", b.op("Greater", a, self.num(0.0, "zero")),
                    to=helper.np_dtype_to_tensor_dtype(self.dt)) if mask_positive else None
        x = b.op("Relu", a) if mask_positive else a                           # M ⊙ A
        hw = float(self.h * self.w)
        if method == "gradcam":
            mbar = b.reduce("ReduceMean", mask, [2, 3]) if mask else None
            return self.signed(self.project(w, b.op("Mul", a, mbar) if mbar else a))
        if method == "hirescam":
            return self.signed(self.project(w, x))
        if method in ("gradcam-elementwise", "layercam"):
            w_pos = b.op("Relu", w)
            w_neg = b.op("Neg", b.op("Relu", b.op("Neg", w)))
            if method == "layercam" or mask_positive:  # x ≥ 0: x⁻ vanishes, both methods agree
                return self.by_sign(self.project(w_pos, x),
                                    b.op("Neg", self.project(w_neg, x)))
            x_pos = b.op("Relu", x)
            x_neg = b.op("Sub", x, x_pos)
            pos = b.op("Add", self.project(w_pos, x_pos), self.project(w_neg, x_neg))
            neg = b.op("Neg", b.op("Add", self.project(w_neg, x_pos), self.project(w_pos, x_neg)))
            return self.by_sign(pos, neg)
        if method == "xgradcam":
            sum_a = b.reduce("ReduceSum", a, [2, 3])                              # [B,C,1,1]
            ratio = b.op("Div", b.reduce("ReduceSum", x, [2, 3]),
                         b.op("Add", sum_a, self.num(XGRAD_EPS, "eps")))
            return self.signed(self.project(w, b.op("Mul", a, ratio)))
        if method == "gradcam++":
            sum_a = b.unsqueeze(b.reduce("ReduceSum", a, [2, 3], False), [1])     # [B,1,C]
            gv = b.op("Mul", b.unsqueeze(self.sign, [2]), w) if self.sign else w  # [·,K,C]
            g2 = b.op("Mul", gv, gv)
            den = b.op("Add", b.op("Add", b.op("Mul", self.num(2.0, "two"), g2),
                                   b.op("Mul", sum_a, b.op("Mul", g2, gv))),
                       self.num(PLUSPLUS_EPS, "eps"))
            count = b.unsqueeze(b.reduce("ReduceSum", mask, [2, 3], False), [1]) if mask \
                else self.num(hw, "hw")                                             # [B,1,C]
            weight_bkc = b.op("Mul", b.op("Mul", b.op("Relu", gv), self.alpha(gv, g2, den)), count)
            return self.project(weight_bkc, a)
        raise ValueError(method)
