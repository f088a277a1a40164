"""The rules added for timm's zoo (issue 27) against float64 autograd, at every opset 13–21 they
exist in, with kinks, ties and zeros placed exactly on their boundaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

from test_vjp_opsets import Case, at, check_at_opset, rand, with_axes

from bincam.export.opset import OPSETS

N = helper.make_node


def one(op, **attrs):
    return lambda opset: ([N(op, ["x"], ["y"], **attrs)], {})


def reduce(op, axes, keepdims):
    def make(opset):
        node, c = with_axes(op, ["x"], "y", axes, opset, keepdims=keepdims)
        return [node], c
    return make


def with_consts(nodes, **values):
    return lambda opset: (nodes, values)


def ties(shape):
    """Inputs with many exact ties: small integers, and whole rows equal."""
    x = torch.randint(-2, 3, (5, *shape)).double()
    x[:, 0] = 1.0
    return x


def zero_rows(shape):
    """Normal inputs with whole last-axis rows of zeros (a norm of 0)."""
    x = torch.randn(5, *shape, dtype=torch.float64)
    x[:, ::2] = 0.0
    return x


PRELU = {"slope": rand(4, 1, 1, lo=0.05, hi=0.5)}
INSTANCE = {"s": rand(4, lo=0.5, hi=2), "bb": rand(4)}
GROUP21 = {"s": rand(6, lo=0.5, hi=2), "bb": rand(6)}
GROUP18 = {"s": rand(3, lo=0.5, hi=2), "bb": rand(3)}


SCALE2 = np.array([1, 1, 2, 2], np.float32)


def _d2s_dcr(x, s):
    n, c, h, w = x.shape
    return x.reshape(n, s, s, c // (s * s), h, w).permute(0, 3, 4, 1, 5, 2).reshape(
        n, c // (s * s), h * s, w * s)


def _s2d(x, s):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4).reshape(
        n, c * s * s, h // s, w // s)


def _group_norm_18(x, c):
    return F.group_norm(x, 3, c["s"].repeat_interleave(2), c["bb"].repeat_interleave(2))


NEW_CASES: dict[str, Case] = {
    "LeakyRelu": Case(one("LeakyRelu", alpha=0.1), lambda x, c: F.leaky_relu(x, 0.1), (4, 5, 5),
                      inputs=at(0.0)),
    "PRelu": Case(with_consts([N("PRelu", ["x", "slope"], ["y"])], **PRELU),
                  lambda x, c: F.prelu(x, c["slope"].reshape(-1)), (4, 5, 5), inputs=at(0.0)),
    "Elu": Case(one("Elu", alpha=0.7), lambda x, c: F.elu(x, 0.7), (4, 5, 5),
                inputs=at(0.0, -30.0, 30.0)),
    "Selu": Case(one("Selu"), lambda x, c: F.selu(x), (4, 5, 5), inputs=at(0.0, -30.0)),
    "Softplus": Case(one("Softplus"), lambda x, c: F.softplus(x), (4, 5, 5),
                     inputs=at(0.0, 25.0, -25.0)),
    "Mish": Case(one("Mish"), lambda x, c: F.mish(x), (4, 5, 5), inputs=at(0.0, 25.0, -25.0),
                 since=18),
    "Softsign": Case(one("Softsign"), lambda x, c: F.softsign(x), (4, 5, 5), inputs=at(0.0)),
    "Gelu": Case(one("Gelu"), lambda x, c: F.gelu(x), (4, 5, 5), inputs=at(0.0, -8.0, 8.0),
                 since=20),
    "Gelu-tanh": Case(one("Gelu", approximate="tanh"), lambda x, c: F.gelu(x, approximate="tanh"),
                      (4, 5, 5), inputs=at(0.0, -8.0, 8.0), since=20),
    "LogSoftmax": Case(one("LogSoftmax", axis=-1), lambda x, c: F.log_softmax(x, -1), (4, 5, 5),
                       inputs=ties),
    "LogSoftmax-channels": Case(one("LogSoftmax", axis=1), lambda x, c: F.log_softmax(x, 1),
                                (4, 5, 5)),
    "ReduceSumSquare": Case(reduce("ReduceSumSquare", [2, 3], 0),
                            lambda x, c: (x * x).sum((2, 3)), (4, 5, 5)),
    "ReduceL2": Case(reduce("ReduceL2", [-1], 1),
                     lambda x, c: torch.linalg.vector_norm(x, dim=-1, keepdim=True), (4, 5, 5),
                     inputs=zero_rows),
    "ReduceL2-two-axes": Case(reduce("ReduceL2", [1, 3], 0),
                              lambda x, c: torch.linalg.vector_norm(x, dim=(1, 3)), (4, 5, 5)),
    "ReduceMax": Case(reduce("ReduceMax", [-1], 0), lambda x, c: x.max(-1).values, (4, 5, 6),
                      inputs=ties),
    "ReduceMax-keepdims": Case(reduce("ReduceMax", [1], 1),
                               lambda x, c: x.max(1, keepdim=True).values, (4, 5, 6),
                               inputs=ties),
    "ReduceMax-two-axes": Case(reduce("ReduceMax", [2, 3], 0),
                               lambda x, c: x.flatten(2).max(-1).values, (4, 5, 6),
                               inputs=ties),
    "ReduceMin": Case(reduce("ReduceMin", [2], 1), lambda x, c: x.min(2, keepdim=True).values,
                      (4, 5, 6), inputs=ties),
    "Mean": Case(with_consts([N("Mean", ["x", "x", "c"], ["y"])], c=rand(5)),
                 lambda x, c: (2 * x + c["c"]) / 3, (4, 5, 5)),
    "InstanceNormalization": Case(with_consts([N("InstanceNormalization", ["x", "s", "bb"],
                                                 ["y"], epsilon=1e-5)], **INSTANCE),
                                  lambda x, c: F.instance_norm(x, weight=c["s"], bias=c["bb"]),
                                  (4, 5, 5)),
    "GroupNormalization": Case(with_consts([N("GroupNormalization", ["x", "s", "bb"], ["y"],
                                              num_groups=3)], **GROUP21),
                               lambda x, c: F.group_norm(x, 3, c["s"], c["bb"]), (6, 4, 4),
                               since=21),
    "Einsum-scores": Case(lambda opset: ([N("Einsum", ["x", "x"], ["y"],
                                            equation="bhid,bhjd->bhij")], {}),
                          lambda x, c: torch.einsum("bhid,bhjd->bhij", x, x), (2, 5, 4)),
    "Einsum-attention": Case(lambda opset: ([N("Einsum", ["x", "x"], ["s"],
                                               equation="bhid,bhjd->bhij"),
                                             N("Softmax", ["s"], ["p"], axis=-1),
                                             N("Einsum", ["p", "x"], ["y"],
                                               equation="bhij,bhjd->bhid")], {}),
                             lambda x, c: torch.einsum("bhij,bhjd->bhid", torch.softmax(
                                 torch.einsum("bhid,bhjd->bhij", x, x), -1), x), (2, 5, 4)),
    "Einsum-constant-implicit": Case(with_consts([N("Einsum", ["x", "w"], ["y"],
                                                    equation="bcd,de")], w=rand(4, 3)),
                                     lambda x, c: torch.einsum("bcd,de->bce", x, c["w"]), (5, 4)),
    "DepthToSpace": Case(one("DepthToSpace", blocksize=2), lambda x, c: _d2s_dcr(x, 2),
                         (8, 3, 2)),
    "DepthToSpace-CRD": Case(one("DepthToSpace", blocksize=2, mode="CRD"),
                             lambda x, c: F.pixel_shuffle(x, 2), (8, 3, 2)),
    "SpaceToDepth": Case(one("SpaceToDepth", blocksize=2), lambda x, c: _s2d(x, 2), (3, 4, 6)),
    "Resize-nearest": Case(with_consts([N("Resize", ["x", "", "sc"], ["y"], mode="nearest",
                                          coordinate_transformation_mode="asymmetric",
                                          nearest_mode="floor")], sc=SCALE2),
                           lambda x, c: F.interpolate(x, scale_factor=2, mode="nearest"),
                           (3, 4, 5)),
    "Resize-nearest-round-prefer-floor": Case(
        with_consts([N("Resize", ["x", "", "sc"], ["y"], mode="nearest",
                       coordinate_transformation_mode="asymmetric",
                       nearest_mode="round_prefer_floor")], sc=SCALE2),
        lambda x, c: F.interpolate(x, scale_factor=2, mode="nearest"), (3, 4, 5)),
    "Resize-nearest-down-sizes": Case(
        with_consts([N("Resize", ["x", "", "", "sz"], ["y"], mode="nearest", axes=[2, 3],
                       coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
                    sz=np.array([3, 4], np.int64)),
        lambda x, c: F.interpolate(x, size=(3, 4), mode="nearest"), (3, 7, 9), since=18),
    "Resize-linear-half-pixel": Case(
        with_consts([N("Resize", ["x", "", "sc"], ["y"], mode="linear",
                       coordinate_transformation_mode="half_pixel")], sc=SCALE2),
        lambda x, c: F.interpolate(x, scale_factor=2, mode="bilinear"), (3, 4, 5)),
    "Resize-linear-pytorch-half-pixel": Case(
        with_consts([N("Resize", ["x", "", "", "sz"], ["y"], mode="linear", axes=[2, 3],
                       coordinate_transformation_mode="pytorch_half_pixel")],
                    sz=np.array([3, 4], np.int64)),
        lambda x, c: F.interpolate(x, size=(3, 4), mode="bilinear"), (3, 7, 9), since=18),
    "Resize-linear-align-corners": Case(
        with_consts([N("Resize", ["x", "", "sc"], ["y"], mode="linear",
                       coordinate_transformation_mode="align_corners")], sc=SCALE2),
        lambda x, c: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True),
        (3, 4, 5)),
    "GatherND": Case(with_consts([N("Transpose", ["x"], ["t"], perm=[1, 2, 0, 3]),
                                  N("GatherND", ["t", "i"], ["g"]),
                                  N("Transpose", ["g"], ["y"], perm=[1, 0, 2])],
                                 i=np.array([[0, 1], [3, 4], [0, 1], [-1, -5]], np.int64)),
                     lambda x, c: x[:, [0, 3, 0, -1], [1, 4, 1, -5]], (4, 5, 6)),
}


@pytest.mark.parametrize(("name", "opset"), [(n, o) for n, c in NEW_CASES.items() for o in OPSETS
                                             if c.since <= o])
def test_new_rule_matches_autograd_at_opset(name, opset):
    check_at_opset(name, NEW_CASES[name], opset)


@pytest.mark.parametrize("opset", [18, 20])
def test_group_norm_per_group_scale_of_opsets_18_to_20(opset):
    """GroupNormalization-18 (γ per group; deprecated by ONNX, so the checker refuses the model
    itself, but ONNX Runtime runs it): γ repeated over each group's channels."""
    case = Case(with_consts([N("GroupNormalization", ["x", "s", "bb"], ["y"], num_groups=3)],
                            **GROUP18), _group_norm_18, (6, 4, 4))
    check_at_opset("GroupNormalization-per-group", case, opset, checker=False)


def test_reduce_max_ties_go_to_the_first_maximum():
    """Spelled out: a row of equal values sends its whole gradient to its first element."""
    from bincam.export.vjp import GRADIENTS, append_gradients
    import onnxruntime as ort
    from test_vjp_opsets import build

    model = build(NEW_CASES["ReduceMax-two-axes"], 17, np.eye(4, 3, dtype=np.float32))
    extended = append_gradients(model, "x", "logits")
    sess = ort.InferenceSession(extended.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 4, 5, 6), np.float32)
    x[0, 1, 2, 3] = x[0, 1, 4, 0] = 1.0                   # channel 1: two maxima, (2, 3) first
    got = sess.run([GRADIENTS], {"x": x})[0][0]           # [K, C, h, w]
    assert got[0, 0, 0, 0] == 1 and np.count_nonzero(got[0]) == 1        # all zeros: the first
    assert got[1, 1, 2, 3] == 1 and np.count_nonzero(got[1]) == 1
