"""The VJP pass, rule by rule: each op's exported gradient equals autograd on random inputs, and
every op the gradient pass emits passes the TensorRT lint."""

import io
import zlib
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from bincam.errors import BincamError
from bincam.export.forward import fold_constants
from bincam.export.lint import SUPPORTED, lint_tensorrt
from bincam.export.rules import RULES, vjp_rule
from bincam.export.vjp import GRADIENTS, append_gradients, path_nodes

K = 3


class Probe(nn.Module):
    """``x → op(x) → flatten → Linear(K)``: the op under test between activations and logits."""

    def __init__(self, op, features):
        super().__init__()
        self.op = op
        self.head = nn.Linear(features, K)

    def forward(self, x):
        return self.head(torch.flatten(self.op(x), 1))


def export(module, x):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=18,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return fold_constants(onnx.load_from_string(buf.getvalue()))


def autograd_jacobian(module, x):
    x = x.clone().requires_grad_(True)
    z = module(x)
    rows = [torch.autograd.grad(z[:, k].sum(), x, retain_graph=True)[0] for k in range(K)]
    return torch.stack(rows, 1).detach().numpy()                      # [B, K, *x.shape[1:]]


class Lambda(nn.Module):
    def __init__(self, fn, *params):
        super().__init__()
        self.fn = fn
        self.params = nn.ParameterList(params)

    def forward(self, x):
        return self.fn(x, *self.params)


def bn():
    m = nn.BatchNorm2d(4).eval()
    m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
    return m


CASES = {  # name: (op module, op types it covers, input shape[, "ties": post-ReLU inputs])
    "Conv": (nn.Conv2d(4, 6, 3, stride=2, padding=1), {"Conv"}, (4, 9, 9)),
    # NFNet's weight standardisation (timm's ScaledStdConv2d: a training-mode batch_norm of the
    # weight, which neither exporter folds): the rule folds it (VjpBuilder.constant)
    "Conv-computed-weight": (Lambda(lambda x, w, g: F.conv2d(x, F.batch_norm(
        w.reshape(1, 32, -1), None, None, weight=g, training=True, momentum=0.0,
        eps=1e-6).reshape_as(w), padding=1), nn.Parameter(torch.randn(32, 4, 3, 3)),
        nn.Parameter(torch.rand(32) + 0.5)), {"Conv"}, (4, 6, 6)),
    "Conv-groups-dilation": (nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2), {"Conv"},
                             (4, 8, 8)),
    "Relu": (nn.ReLU(), {"Relu"}, (4, 5, 5)),
    "Relu-at-zero": (nn.ReLU(), {"Relu"}, (4, 5, 5), "ties"),  # exact zeros: gradient 0 there
    "Sigmoid": (nn.Sigmoid(), {"Sigmoid"}, (4, 5, 5)),
    "Add": (Lambda(lambda x, p: x + p, nn.Parameter(torch.randn(4, 1, 1))), {"Add"}, (4, 5, 5)),
    "Sub": (Lambda(lambda x, p: p - x, nn.Parameter(torch.randn(4, 5, 5))), {"Sub"}, (4, 5, 5)),
    "Sub-both": (Lambda(lambda x: x - torch.sigmoid(x)), {"Sub"}, (4, 5, 5)),
    "Mul": (Lambda(lambda x, p: x * p, nn.Parameter(torch.randn(4, 1, 5))), {"Mul"}, (4, 5, 5)),
    "Mul-square": (Lambda(lambda x: x * x), {"Mul"}, (4, 5, 5)),
    "BatchNormalization": (bn(), {"BatchNormalization"}, (4, 5, 5)),
    "MatMul-flattened": (Lambda(lambda x, w: F.linear(torch.flatten(x, 1), w),
                                nn.Parameter(torch.randn(7, 100))), {"MatMul"}, (4, 5, 5)),
    "MatMul": (Lambda(lambda x, w: x @ w, nn.Parameter(torch.randn(5, 6))), {"MatMul"}, (4, 5, 5)),
    "Reshape": (Lambda(lambda x: x.reshape(-1, 20, 5)), {"Reshape"}, (4, 5, 5)),
    "Transpose": (Lambda(lambda x: x.permute(0, 2, 3, 1)), {"Transpose"}, (4, 5, 6)),
    "ReduceMean": (Lambda(lambda x: x.mean(dim=(2, 3))), {"ReduceMean"}, (4, 5, 5)),
    "GlobalAveragePool": (nn.AdaptiveAvgPool2d(1), {"GlobalAveragePool"}, (4, 5, 5)),
    "AveragePool": (nn.AvgPool2d(2), {"AveragePool"}, (4, 6, 6)),
    "AveragePool-stride": (nn.AvgPool2d(3, stride=2), {"AveragePool"}, (4, 9, 9)),
    "MaxPool": (nn.MaxPool2d(2), {"MaxPool"}, (4, 6, 6)),
    # ties: fed post-ReLU values (many exact zeros), as at vgg's Grad-CAM layer
    "MaxPool-ties": (nn.MaxPool2d(2), {"MaxPool"}, (4, 6, 6), "ties"),
    "MaxPool-overlapping-ties": (nn.MaxPool2d(3, stride=2), {"MaxPool"}, (4, 9, 9), "ties"),
    "MaxPool-floor-remainder": (nn.MaxPool2d(2), {"MaxPool"}, (4, 7, 7)),
    "MaxPool-pad-dilation-ceil": (nn.MaxPool2d(3, stride=2, padding=1, dilation=2,
                                               ceil_mode=True), {"MaxPool"}, (4, 10, 11)),
    "MaxPool-stem": (nn.MaxPool2d(3, stride=2, padding=1), {"MaxPool"}, (4, 8, 8)),
    "AveragePool-ceil-count-pad": (nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True),
                                   {"AveragePool"}, (4, 8, 8)),
    "AveragePool-ceil-exclude-pad": (nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True,
                                                  count_include_pad=False), {"AveragePool"},
                                     (4, 8, 8)),
    "AveragePool-pad-exclude": (nn.AvgPool2d(2, padding=1, count_include_pad=False),
                                {"AveragePool"}, (4, 7, 7)),
    "Concat": (Lambda(lambda x: torch.cat([x, 2 * x[:, :2]], 1)), {"Concat", "Slice", "Mul"},
               (4, 5, 5)),
    "Slice": (Lambda(lambda x: x[:, 1:3, 1:4, 2:]), {"Slice"}, (4, 5, 5)),
    # strided slices (LeViT's subsampling x[:, ::2]): two axes, a remainder, an end past the extent
    "Slice-step2-two-axes": (Lambda(lambda x: x[:, ::2, 1::3]), {"Slice"}, (5, 7, 8)),
    "Slice-step3-clamped-end": (Lambda(lambda x: x[:, 1:100:3]), {"Slice"}, (8, 5)),
    "Slice-flip": (Lambda(lambda x: torch.flip(x, [2])), {"Slice"}, (4, 5, 6)),  # step −1
    # index tensors of rank 2 and 3, negative and repeated indices (their gradients add up)
    "Gather-rank2": (Lambda(lambda x: x[:, :, torch.tensor([[0, -1], [2, 0]])]), {"Gather"},
                     (4, 5, 6)),
    "Gather-rank3-last-axis": (Lambda(lambda x: x[..., torch.tensor([[[5, -1], [0, 0]],
                                                                     [[-6, 2], [3, 3]]])]),
                               {"Gather"}, (4, 6)),
    "Gather-rank2-one-index": (Lambda(lambda x: x[:, torch.tensor([[-2]])]), {"Gather"}, (5, 3)),
    "Unsqueeze": (Lambda(lambda x: x.unsqueeze(2)), {"Unsqueeze"}, (4, 5, 5)),
    # MobileViT, GhostNetV2: Resize to a size read from a shape at run time ([B, C] dynamic)
    "Resize-computed-sizes": (Lambda(lambda x: F.interpolate(
        F.avg_pool2d(x, 2), size=x.shape[-2:], mode="bilinear", align_corners=False)),
        {"Resize"}, (4, 6, 6)),
    # CrossViT averages its branches' logits: a stack [2, B, …] and a mean over axis 0, which
    # has a static size there (the batch is axis 1)
    "Stack-mean-axis0": (Lambda(lambda x: torch.stack([x, 2 * x[:, [1, 0, 3, 2]]]).mean(0)),
                         {"Concat", "ReduceMean"}, (4, 3, 3)),
    "Squeeze": (Lambda(lambda x: x.squeeze(2)), {"Squeeze"}, (4, 1, 5)),
}

_rng = np.random.default_rng(0)
HAND_BUILT = {  # name: (ONNX node x → y, its constant inputs, torch equivalent, covers, input shape)
    "Pad": (helper.make_node("Pad", ["x", "pads"], ["y"], mode="constant"),
            {"pads": np.array([0, 0, 1, 2, 0, 0, 1, 0], dtype=np.int64)},
            lambda x, c: F.pad(x, (2, 0, 1, 1)), {"Pad"}, (4, 5, 5)),
    "Flatten": (helper.make_node("Flatten", ["x"], ["y"], axis=1), {},
                lambda x, c: torch.flatten(x, 1), {"Flatten"}, (4, 5, 5)),
    "Identity": (helper.make_node("Identity", ["x"], ["y"]), {}, lambda x, c: x, {"Identity"},
                 (4, 5, 5)),
    "Gemm-alpha-transB0": (
        helper.make_node("Gemm", ["x", "W", "C"], ["y"], alpha=0.5, beta=2.0),
        {"W": _rng.normal(size=(20, 6)).astype(np.float32),
         "C": _rng.normal(size=6).astype(np.float32)},
        lambda x, c: 0.5 * x @ c["W"] + 2.0 * c["C"], {"Gemm"}, (20,)),
    # negative steps on several axes, starts and ends past the extent (ONNX clamps them)
    "Slice-negative-steps": (
        helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"]),
        {"st": np.array([-1, 4, 0], np.int64), "en": np.array([-2**63, 0, 2**63 - 1], np.int64),
         "ax": np.array([3, 1, -2], np.int64), "sp": np.array([-2, -1, 3], np.int64)},
        lambda x, c: x.flip(3)[..., ::2][:, 1:5].flip(1)[:, :, ::3], {"Slice"}, (6, 5, 7)),
    "Slice-step-2-clamped-start": (
        helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"]),
        {"st": np.array([100], np.int64), "en": np.array([-100], np.int64),
         "ax": np.array([-1], np.int64), "sp": np.array([-2], np.int64)},
        lambda x, c: x.flip(-1)[..., ::2], {"Slice"}, (4, 6)),
}
COVERED = set().union(*(case[1] for case in CASES.values()),
                      *(case[3] for case in HAND_BUILT.values()))


def fresh_input(shape, ties: bool = False) -> torch.Tensor:
    """A fresh batch of 5 (another batch size); ``ties``: ReLU(x − 1), mostly exact zeros."""
    x = torch.randn(5, *shape)
    return F.relu(x - 1) if ties else x


def check_gradients(name, graph, module, shape, covers, ties: bool = False,
                    tensorrt: bool = True):
    """The exported gradients of ``graph`` pass the lint (``tensorrt``: a graph TensorRT can
    take at all) and equal autograd of ``module``."""
    assert covers <= {n.op_type for n in path_nodes(graph.graph, "x", "logits")}, name
    extended = append_gradients(graph, "x", "logits")
    onnx.checker.check_model(extended, full_check=True)
    new_nodes = extended.graph.node[len(graph.graph.node):]
    added = {n.op_type for n in new_nodes}
    assert added <= set(SUPPORTED), f"{name}: {sorted(added - set(SUPPORTED))}"
    # the gradient nodes pass the lint (a forward op of the probe may itself be outside TensorRT)
    problems = [p for p in lint_tensorrt(extended) if any(f"'{n.name}'" in p for n in new_nodes)]
    assert problems == [] or not tensorrt, problems
    sess = ort.InferenceSession(extended.SerializeToString(), providers=["CPUExecutionProvider"])
    x2 = fresh_input(shape, ties)
    got = sess.run([GRADIENTS], {"x": x2.numpy()})[0]
    expected = autograd_jacobian(module, x2)
    assert got.shape == expected.shape
    rel = np.linalg.norm(got - expected) / max(np.linalg.norm(expected), 1e-12)
    assert rel <= 1e-5, f"{name}: relative L2 {rel:.2e}"


def check_case(name, op, covers, shape, ties: bool = False, tensorrt: bool = True):
    """``op`` between a probe's input and its Linear head, exported from torch and checked;
    returns ``(graph, module)``."""
    torch.manual_seed(zlib.crc32(name.encode()) % 1000)
    x = torch.randn(3, *shape)
    module = Probe(op, torch.flatten(op(x), 1).shape[1]).eval()
    graph = export(module, x)
    check_gradients(name, graph, module, shape, covers, ties, tensorrt)
    return graph, module


@pytest.mark.parametrize("name", list(CASES))
def test_rule_matches_autograd(name):
    op, covers, shape, *ties = CASES[name]
    check_case(name, op, covers, shape, ties == ["ties"])


def hand_built(op_node, consts, x_shape, head):
    """``x → op_node → 'y' → Flatten → Gemm(head) → logits`` written with onnx.helper."""
    inits = {**consts, "w": head.weight.detach().numpy(), "bias": head.bias.detach().numpy()}
    nodes = [op_node, helper.make_node("Flatten", ["y"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w", "bias"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *x_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", K])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def check_hand_built(name, case) -> None:
    """``check_gradients`` for a ``HAND_BUILT``-style case ``(node, constants, torch fn, covers,
    input shape)``."""
    torch.manual_seed(zlib.crc32(name.encode()) % 1000)
    op_node, consts, fn, covers, shape = case
    tensors = {k: torch.from_numpy(v) for k, v in consts.items()}
    op = Lambda(lambda x: fn(x, tensors))
    module = Probe(op, torch.flatten(op(torch.randn(1, *shape)), 1).shape[1]).eval()
    check_gradients(name, hand_built(op_node, consts, shape, module.head), module, shape, covers)


@pytest.mark.parametrize("name", list(HAND_BUILT))
def test_hand_built_rule_matches_autograd(name):
    check_hand_built(name, HAND_BUILT[name])


def test_every_rule_has_a_case():
    """The rules of rules.py and rules_pool.py; test_vjp_rules_more.py covers all of ``RULES``."""
    own = {op for op, rule in RULES.items()
           if rule.__module__ in ("bincam.export.rules", "bincam.export.rules_pool")}
    assert own <= COVERED, f"no test case for {sorted(own - COVERED)}"


def test_registering_an_op_type_twice_raises():
    before = dict(RULES)
    with pytest.raises(ValueError, match="two VJP rules for op Relu: relu and"):
        vjp_rule("Acos", "Relu")(lambda b, node, dys, wanted: {})
    with pytest.raises(ValueError, match="two VJP rules for op Acos"):
        vjp_rule("Acos", "Acos")(lambda b, node, dys, wanted: {})
    assert RULES == before


def test_selected_logits_only():
    torch.manual_seed(0)
    module = Probe(nn.ReLU(), 100).eval()
    x = torch.randn(2, 4, 5, 5)
    extended = append_gradients(export(module, x), "x", "logits", indices=[2, 0])
    sess = ort.InferenceSession(extended.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run([GRADIENTS], {"x": x.numpy()})[0]
    assert np.allclose(got, autograd_jacobian(module, x)[:, [2, 0]], atol=1e-6)


def test_op_without_rule_names_op_and_node():
    module = Probe(Lambda(lambda x: torch.exp(x)), 100).eval()
    graph = export(module, torch.randn(2, 4, 5, 5))
    with pytest.raises(BincamError, match=r"no gradient rule for op Exp \(node '.*'\)"):
        append_gradients(graph, "x", "logits")


def test_maxpool_ties_go_to_one_position_regression():
    """vgg's ReLU → 2×2/2 MaxPool at its Grad-CAM layer: windows of ReLU zeros are ties; autograd
    (and ONNX Runtime's argmax) routes each window's gradient to its first position. The old rule
    sent it to all four (Grad-CAM weights off by up to 213 %)."""
    torch.manual_seed(5)
    module = Probe(nn.MaxPool2d(2), 4 * 4 * 4).eval()
    x = F.relu(torch.randn(6, 4, 8, 8) - 1.0)             # the tap: post-ReLU, mostly zeros
    extended = append_gradients(export(module, x), "x", "logits")
    sess = ort.InferenceSession(extended.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run([GRADIENTS], {"x": x.numpy()})[0]
    expected = autograd_jacobian(module, x)
    windows = x.unfold(2, 2, 2).unfold(3, 2, 2).reshape(6, 4, 4, 4, 4)
    assert int((windows.amax(-1) == 0).sum()) > 100       # the input really has tied windows
    assert np.abs(got - expected).max() <= 1e-6
    positions = (np.abs(got[:, 0]) > 0).reshape(6, 4, 4, 2, 4, 2).sum(axis=(3, 5))
    assert positions.max() == 1                            # never two positions of one window


def test_maxpool_indices_output_is_refused():
    node = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], strides=[2, 2])
    head = nn.Linear(4 * 3 * 3, K)
    graph = hand_built(node, {}, (4, 6, 6), head)
    with pytest.raises(BincamError, match="MaxPool node .*Indices output is not supported"):
        append_gradients(graph, "x", "logits")


@pytest.mark.parametrize("mix", ["mean", "concat"])
def test_mixing_the_images_of_a_batch_is_refused(mix):
    """A mean or a concatenation over the (dynamic) batch axis mixes images: refused by name."""
    fn = (lambda x: x - x.mean(0, keepdim=True)) if mix == "mean" else \
        (lambda x: torch.cat([x, 2 * x], 0))
    x = torch.randn(3, 4, 5, 5)
    module = Probe(Lambda(fn), 100).eval()
    graph = export(module, x)
    with pytest.raises(BincamError, match="batch axis"):
        append_gradients(graph, "x", "logits")

