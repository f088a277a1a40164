"""VJP rules of the ops that move or resample elements: ``Einsum`` (attention's two-operand forms),
``DepthToSpace``/``SpaceToDepth`` (both modes) and ``Resize`` (nearest, linear, cubic; every
coordinate mode but ``tf_crop_and_resize``).

``Resize`` over the last two axes of a ``[B, C, H, W]`` tensor is separable and linear:
``Y = A_h·X·A_wᵀ`` with constant interpolation matrices ``A_h [Ho, H]``, ``A_w [Wo, W]``, so
``dX = A_hᵀ·dY·A_w`` (two MatMuls). The matrices are read off ONNX Runtime itself, running the
node's own attributes on basis images, so every mode is exactly the forward's.
"""

from __future__ import annotations

import string

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bincam.errors import BincamError
from bincam.export.rules import _attrs, _collect, _const, _only, vjp_rule


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@vjp_rule("Einsum")
def einsum(b, node, dys, wanted):
    """``Y = einsum(t₁,…,tₙ → o)``: ``dXᵢ = einsum(k·o, t_j (j ≠ i) → k·tᵢ)`` with ``dY``, ``k`` the
    K axis' letter — valid where each of ``tᵢ``'s letters is in ``o`` or another operand and none
    repeats within ``tᵢ`` (attention's ``bhid,bhjd->bhij``, ``bhij,bhjd->bhid`` …); no ``...``."""
    equation = _text(_attrs(node)["equation"]).replace(" ", "")
    if "..." in equation:
        raise BincamError(f"Einsum node {node.name!r}: an ellipsis ('...') is not supported")
    lhs, _, out = equation.partition("->")
    terms = lhs.split(",")
    if "->" not in equation:  # implicit output: the letters used once, in alphabetical order
        out = "".join(sorted(c for c in set(lhs) if c.isalpha() and lhs.count(c) == 1))
    k = next(c for c in string.ascii_lowercase + string.ascii_uppercase if c not in equation)
    pairs = []
    for i, x in enumerate(node.input):
        if x not in wanted:
            continue
        others = [j for j in range(len(terms)) if j != i]
        reachable = set(out).union(*(set(terms[j]) for j in others))
        if len(set(terms[i])) != len(terms[i]) or not set(terms[i]) <= reachable:
            raise BincamError(f"Einsum node {node.name!r} ({equation}): the gradient of operand "
                              f"{i} is not supported (a repeated or summed-away index)")
        back = ",".join([k + out] + [terms[j] for j in others]) + "->" + k + terms[i]
        pairs.append((x, b.node("Einsum", [dys[node.output[0]], *[node.input[j] for j in others]],
                                "einsum", equation=back)))
    return _collect(b, pairs)


def _inverse(perm: list[int]) -> list[int]:
    return [int(p) for p in np.argsort(perm)]


def _rearranged_back(b, node, dy: str, moved_shape: list[int], perm: list[int]) -> str:
    """The VJP of ``reshape → transpose(perm) → reshape``: ``dY`` reshaped to the transposed
    shape (K·B first), transposed back, reshaped to the input's."""
    moved = b.node("Reshape", [dy, b.const([-1, *moved_shape], "shape", np.int64)], "moved")
    return b.back_to(b.node("Transpose", [moved], "unmoved", perm=_inverse(perm)), node.input[0])


@vjp_rule("DepthToSpace")
def depth_to_space(b, node, dys, wanted):
    """DCR: ``[B, s, s, C', H, W]`` permuted ``(0,3,4,1,5,2)``; CRD: ``[B, C', s, s, H, W]``
    permuted ``(0,1,4,2,5,3)``; either to ``[B, C', H, s, W, s]``. ``dX`` undoes it."""
    a = _attrs(node)
    s, mode = int(a["blocksize"]), _text(a.get("mode", "DCR"))
    c, h, w = b.static(node.input[0])
    perm = [0, 3, 4, 1, 5, 2] if mode == "DCR" else [0, 1, 4, 2, 5, 3]
    return {node.input[0]: _rearranged_back(b, node, dys[node.output[0]],
                                            [c // (s * s), h, s, w, s], perm)}


@vjp_rule("SpaceToDepth")
def space_to_depth(b, node, dys, wanted):
    """``[B, C, H', s, W', s]`` permuted ``(0,3,5,1,2,4)`` to ``[B, s, s, C, H', W']``."""
    s = int(_attrs(node)["blocksize"])
    c, h, w = b.static(node.input[0])
    return {node.input[0]: _rearranged_back(b, node, dys[node.output[0]],
                                            [s, s, c, h // s, w // s], [0, 3, 5, 1, 2, 4])}


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _sizes(b, node, axes: list[int]) -> np.ndarray:
    """A Resize node's ``sizes``: the constant, or — computed at run time from a shape, as
    MobileViT and GhostNetV2 do (``[B, C]`` read from the input, ``H × W`` fixed) — the static
    size of its output on the resized axes, which shape inference proved."""
    value = b.constant(node.input[3])
    if value is not None:
        return value
    out = b.shape(node.output[0]) if node.output[0] in b.shapes else []
    if len(out) == 4 and all(isinstance(d, int) for d in out[2:]) and \
            out[1] == b.shape(node.input[0])[1]:
        return np.array([out[ax % 4] for ax in axes] if axes else [0, 0, *out[2:]], np.int64)
    raise BincamError(f"Resize node {node.name!r}: its sizes {node.input[3]!r} are computed at run "
                      "time and its output size is not static; export the model with a fixed "
                      "input size (no dynamic height or width) so the sizes are known")


def _axis_matrices(b, node, size_in: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(A_h [Ho, H], A_w [Wo, W])`` of a Resize node, from ONNX Runtime on basis images."""
    import onnxruntime as ort

    a = _attrs(node)
    scales = _const(b, node.input[2], "scales", node) if _input(node, 2) else None
    axes = list(a.get("axes", []))
    sizes = _sizes(b, node, axes) if _input(node, 3) else None
    if axes and sorted(ax % 4 for ax in axes) != [2, 3]:
        raise BincamError(f"Resize node {node.name!r}: only resizing the last two axes is "
                          "supported")
    if scales is not None and scales.size and not axes and np.any(scales[:2] != 1):
        raise BincamError(f"Resize node {node.name!r}: resizing the batch or channel axis is "
                          "not supported")
    matrices = []
    for axis in (0, 1):
        n = size_in[axis]
        basis = np.zeros((n, 1, *size_in), np.float32)
        for i in range(n):
            if axis == 0:
                basis[i, 0, i, :] = 1.0
            else:
                basis[i, 0, :, i] = 1.0
        inits = []
        inputs = ["x", ""]
        if scales is not None and scales.size:
            inits.append(numpy_helper.from_array(scales.astype(np.float32), "scales"))
            inputs.append("scales")
        else:
            spatial = sizes.astype(np.int64) if axes else np.array([n, 1, *sizes[2:]], np.int64)
            inits.append(numpy_helper.from_array(spatial, "sizes"))
            inputs += ["", "sizes"]
        one = helper.make_node("Resize", inputs, ["y"], **a)
        graph = helper.make_graph([one], "basis", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, list(basis.shape))], [helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, None)], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", b.opset)],
                                  ir_version=min(b.model.ir_version or onnx.IR_VERSION, 10))
        out = ort.InferenceSession(model.SerializeToString(), providers=[
            "CPUExecutionProvider"]).run(None, {"x": basis})[0][:, 0]        # [n, Ho, Wo]
        line = out[:, :, 0] if axis == 0 else out[:, 0, :]                   # [n, Ho or Wo]
        across = out if axis == 0 else out.transpose(0, 2, 1)
        if not np.allclose(across, line[:, :, None], atol=1e-6):  # rows of weights not summing to 1
            raise BincamError(f"Resize node {node.name!r}: its weights are not separable")
        matrices.append(line.T.astype(np.float32))
    return matrices[0], matrices[1]


@vjp_rule("Resize")
def resize(b, node, dys, wanted):
    """``dX = A_hᵀ·dY·A_w`` (constant scales or sizes; a ``[B, C, H, W]`` input)."""
    _only(node, wanted)
    mode = _text(_attrs(node).get("coordinate_transformation_mode", "half_pixel"))
    if len(b.shape(node.input[0])) != 4 or mode == "tf_crop_and_resize":
        raise BincamError(f"Resize node {node.name!r}: only a [B, C, H, W] input without "
                          "tf_crop_and_resize is supported")
    a_h, a_w = _axis_matrices(b, node, b.static(node.input[0])[1:])
    rows = b.node("MatMul", [dys[node.output[0]], b.const(a_w, "resize_w")], "resize")
    return {node.input[0]: b.node("MatMul", [b.const(a_h.T.copy(), "resize_h"), rows], "resize")}
