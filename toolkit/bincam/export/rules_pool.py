"""VJP rules of the 2-D window pools, for any kernel, stride, padding, dilation and ``ceil_mode``.

Both are written as a sum over the ``kh·kw`` kernel offsets ``o = (i, j)``: the window element at
offset ``o`` of every output cell is the strided slice ``X_o = Xpad[:, :, i·d : … : s, j·d : … : s]``.
The cotangent goes back through one depth-wise ``ConvTranspose`` with a one-hot kernel per offset,
so only ops on TensorRT's list are emitted (no ``MaxPool`` ``Indices`` output, which it lacks).

- MaxPool: ``dX_o = dY · 1[o is the first offset, in row-major window order, with X_o = Y]`` — the
  one position PyTorch and ONNX Runtime pick; ties (e.g. windows of ReLU zeros) never share it.
- AveragePool: ``dX_o = dY / n``, with ``n`` the divisor of each output cell: the window's cells
  inside the padded input (``count_include_pad=1``) or inside the input itself (``0``).
"""

from __future__ import annotations

import numpy as np

from bincam.errors import BincamError
from bincam.export.rules import _attrs, _only, vjp_rule


class _Windows:
    """The geometry of a 2-D pool node: kernel, strides, dilations, pads and sizes."""

    def __init__(self, b, node):
        a = _attrs(node)
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise BincamError(f"{node.op_type} node {node.name!r}: auto_pad is not supported")
        self.kernel = list(a["kernel_shape"])
        if len(self.kernel) != 2:
            raise BincamError(f"{node.op_type} node {node.name!r}: only 2-D pooling is supported")
        self.strides = list(a.get("strides", [1, 1]))
        self.dil = list(a.get("dilations", [1, 1]))
        self.pads = list(a.get("pads", [0, 0, 0, 0]))          # [top, left, bottom, right]
        self.count_include_pad = bool(a.get("count_include_pad", 0))
        self.channels, *self.size = b.static(node.input[0])   # C, H, W
        self.out = b.static(node.output[0])[1:]               # Ho, Wo
        # the padded extent the windows reach (ceil_mode may reach past the bottom/right pad)
        self.reach = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in
                      zip(self.out, self.strides, self.kernel, self.dil)]

    def offsets(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(self.kernel[0]) for j in range(self.kernel[1])]

    def padded(self, b, x: str, value: float) -> str:
        """``x`` padded at the top/left by the node's pads and at the bottom/right to ``reach``."""
        top, left = self.pads[0], self.pads[1]
        bottom = [max(r - p - s, 0) for r, p, s in zip(self.reach, (top, left), self.size)]
        if not (top or left or any(bottom)):
            return x
        pads = b.const([0, 0, top, left, 0, 0, bottom[0], bottom[1]], "pool_pads", np.int64)
        return b.node("Pad", [x, pads, b.const(value, "pad_value")], "pool_pad", mode="constant")

    def window(self, b, xpad: str, i: int, j: int) -> str:
        """``X_o [B, C, Ho, Wo]``: the window element at offset ``(i, j)`` of every output cell."""
        starts = [i * self.dil[0], j * self.dil[1]]
        ends = [s + (o - 1) * st + 1 for s, o, st in zip(starts, self.out, self.strides)]
        return b.node("Slice", [xpad, b.const(starts, "starts", np.int64),
                                b.const(ends, "ends", np.int64), b.const([2, 3], "axes", np.int64),
                                b.const(self.strides, "steps", np.int64)], "window")

    def stack(self, b, parts: list[str]) -> str:
        """Per-offset cotangents (each ``[K, B, C, Ho, Wo]``, in ``offsets()`` order) as one
        ``[K·B, C·kk, Ho, Wo]`` tensor, channel ``c·kk + o``."""
        stacked = b.node("Concat", [b.unsqueeze(p, [3]) for p in parts], "stack",
                         axis=3)   # [K, B, C, kk, Ho, Wo]
        return b.node("Reshape", [stacked, b.const([-1, self.channels * len(parts), *self.out],
                                                   "shape4", np.int64)])

    def back(self, b, flat: str, x: str, weight: np.ndarray) -> str:
        """``dX [K, B, C, H, W]`` from ``flat [K·B, C·n, Ho, Wo]`` through one depth-wise
        ConvTranspose with ``weight [C·n, 1, kh, kw]`` and the node's strides and dilations."""
        full = b.node("ConvTranspose", [flat, b.const(weight, "pool_w")], "pool_t",
                      strides=self.strides, dilations=self.dil, group=self.channels)
        top, left = self.pads[0], self.pads[1]
        short = [max(p + s - r, 0) for p, s, r in zip((top, left), self.size, self.reach)]
        if any(short):  # floor mode left input rows/columns outside every window: zero gradient
            full = b.node("Pad", [full, b.const([0, 0, 0, 0, 0, 0, *short], "pool_pads",
                                                np.int64)], "pool_grow", mode="constant")
        cropped = b.node("Slice", [full, b.const([top, left], "starts", np.int64),
                                   b.const([top + self.size[0], left + self.size[1]], "ends",
                                           np.int64), b.const([2, 3], "axes", np.int64)], "crop")
        return b.back_to(cropped, x)

    def one_hot_kernels(self) -> np.ndarray:
        """``[C·kk, 1, kh, kw]``: input channel ``c·kk + o`` of group ``c`` writes offset ``o``."""
        kk = len(self.offsets())
        w = np.zeros((self.channels, kk, 1, *self.kernel), dtype=np.float32)
        for o, (i, j) in enumerate(self.offsets()):
            w[:, o, 0, i, j] = 1.0
        return w.reshape(self.channels * kk, 1, *self.kernel)

    def divisor(self) -> np.ndarray:
        """``[Ho, Wo]``: how many window cells each output cell averages."""
        counts = []
        for axis in (0, 1):
            lo = -self.pads[axis] if self.count_include_pad else 0
            hi = self.size[axis] + (self.pads[axis + 2] if self.count_include_pad else 0)
            start = np.arange(self.out[axis]) * self.strides[axis] - self.pads[axis]
            cells = start[:, None] + np.arange(self.kernel[axis]) * self.dil[axis]
            counts.append(((cells >= lo) & (cells < hi)).sum(axis=1))
        return np.outer(*counts).astype(np.float32)


@vjp_rule("MaxPool")
def max_pool(b, node, dys, wanted):
    """``dX`` = ``dY`` at the first window position (row-major) that holds the window's maximum."""
    _only(node, wanted)
    if len(node.output) > 1 and node.output[1]:
        raise BincamError(f"MaxPool node {node.name!r}: its Indices output is not supported")
    geo = _Windows(b, node)
    x, y = node.input[0], node.output[0]
    xpad = geo.padded(b, x, float("-inf"))
    dy, parts, taken = dys[y], [], None
    for i, j in geo.offsets():
        hit = b.node("Cast", [b.node("Equal", [geo.window(b, xpad, i, j), y], "is_max")],
                     "hit", to=1)
        first = hit if taken is None else b.node(
            "Mul", [hit, b.node("Sub", [b.const(1.0, "one"), taken])], "first")
        taken = first if taken is None else b.node("Add", [taken, first], "taken")
        parts.append(b.node("Mul", [dy, first], "routed"))
    return {x: geo.back(b, geo.stack(b, parts), x, geo.one_hot_kernels())}


@vjp_rule("AveragePool")
def average_pool(b, node, dys, wanted):
    """``dX`` = ``dY / n`` spread over each window (``n`` the cell's divisor, padding rules kept)."""
    _only(node, wanted)
    geo = _Windows(b, node)
    y = node.output[0]
    share = b.node("Div", [dys[y], b.const(geo.divisor(), "divisor")], "share")
    ones = np.ones((geo.channels, 1, *geo.kernel), dtype=np.float32)
    return {node.input[0]: geo.back(b, b.as_4d(share, y), node.input[0], ones)}
