"""The rules of rules_elementwise.py and rules_tensor.py against autograd: on fresh random inputs
and, where an op has kinks or ties, on inputs placed exactly on them (PyTorch's conventions there).
"""

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import helper
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock

from test_vjp_rules import (COVERED, K, Lambda, autograd_jacobian, check_case, check_hand_built,
                            export, fresh_input)

from bincam.export.forward import fold_constants
from bincam.export.rules import RULES
from bincam.export.vjp import GRADIENTS, append_gradients, path_nodes


def at(*values):
    """Fresh inputs with every other element set to ``values`` in turn (the kinks under test)."""
    def make(shape):
        x = fresh_input(shape)
        every_other = x.view(-1)[::2]
        every_other.copy_(torch.tensor(values).repeat(every_other.numel())[:every_other.numel()])
        return x
    return make


def equal_along_last(shape):
    """Fresh inputs whose every other row along the last axis is constant (equal logits)."""
    x = fresh_input(shape)
    x[..., ::2, :] = x[..., ::2, :1]
    return x


def affine(norm):
    norm.weight.data.uniform_(0.5, 2), norm.bias.data.uniform_(-1, 1)
    return norm


def param(*shape):
    return nn.Parameter(torch.randn(*shape))


CASES_MORE = {  # name: (op module, op types it covers, input shape[, special inputs])
    "HardSwish": (nn.Hardswish(), {"HardSwish"}, (4, 5, 5), at(-3.0, 3.0, 0.0, -4.0, 4.0)),
    "HardSigmoid": (nn.Hardsigmoid(), {"HardSigmoid"}, (4, 5, 5), at(-3.0, 3.0, 0.0)),
    "Clip-relu6": (nn.ReLU6(), {"Clip"}, (4, 5, 5), at(0.0, 6.0, 7.0, 3.0)),
    "Clip-clamp": (Lambda(lambda x: x.clamp(-0.5, 0.75)), {"Clip"}, (4, 5, 5), at(-0.5, 0.75)),
    "Clip-min": (Lambda(lambda x: x.clamp(min=-0.25)), {"Clip"}, (4, 5, 5), at(-0.25)),
    "Clip-max": (Lambda(lambda x: x.clamp(max=0.5)), {"Clip"}, (4, 5, 5), at(0.5)),
    "Div-constant": (Lambda(lambda x: x / 3.0), {"Div"}, (4, 5, 5)),
    "Div-both": (Lambda(lambda x: x / (x * x + 1)), {"Div"}, (4, 5, 5)),
    "Div-denominator": (Lambda(lambda x, p: p / (x * x + 1), param(4, 1, 5)), {"Div"}, (4, 5, 5)),
    "Erf-gelu": (nn.GELU(), {"Erf", "Div", "Mul", "Add"}, (4, 5, 5)),
    "Tanh-gelu": (nn.GELU(approximate="tanh"), {"Tanh"}, (4, 5, 5)),
    "Pow-cube": (Lambda(lambda x: x ** 3), {"Pow"}, (4, 5, 5)),
    "Pow-square": (Lambda(lambda x: x ** 2), {"Pow"}, (4, 5, 5)),
    "Pow-fractional": (Lambda(lambda x: (x * x + 1) ** 1.5), {"Pow"}, (4, 5, 5)),
    "Sqrt": (Lambda(lambda x: torch.sqrt(x * x + 0.5)), {"Sqrt"}, (4, 5, 5)),
    "Neg": (Lambda(lambda x: -x), {"Neg"}, (4, 5, 5)),
    "Where-both-branches": (Lambda(lambda x: torch.where(x > 0, x, 0.5 * x)), {"Where"},
                            (4, 5, 5), at(0.0)),
    "Where-mask-logic": (Lambda(lambda x: torch.where(((x > 0) & (x <= 1)) | (x == -1) | ~(x < 2),
                                                      x, -x)),
                         {"Greater", "LessOrEqual", "And", "Equal", "Or", "Less", "Not"},
                         (4, 5, 5), at(0.0, 1.0, -1.0, 2.0)),
    "Where-greater-or-equal": (Lambda(lambda x: torch.where(x >= 0, x, -x)), {"GreaterOrEqual"},
                               (4, 5, 5), at(0.0)),
    "Where-constant-condition": (Lambda(lambda x, p: torch.where(p > 0, x, -2 * x), param(5, 5)),
                                 {"Where"}, (4, 5, 5)),
    "Expand": (Lambda(lambda x: x[:, :, :1].expand(-1, -1, 3, -1)), {"Expand"}, (4, 5, 5)),
    "Max-ties": (Lambda(lambda x, p: torch.maximum(x, 0 * p), param(4, 1, 5)), {"Max"}, (4, 5, 5),
                 at(0.0)),
    "Min-both-ties": (Lambda(lambda x: torch.minimum(x, 2 * x)), {"Min"}, (4, 5, 5), at(0.0)),
    "Softmax-last": (nn.Softmax(-1), {"Softmax"}, (4, 5, 5), equal_along_last),
    "Softmax-channels": (nn.Softmax(1), {"Softmax"}, (4, 5, 5)),
    "ReduceSum": (Lambda(lambda x: x.sum(-1)), {"ReduceSum"}, (4, 5, 5)),
    "ReduceSum-keepdim": (Lambda(lambda x: x.sum(dim=(1, 3), keepdim=True)), {"ReduceSum"},
                          (4, 5, 5)),
    "Cast-double": (Lambda(lambda x: (x.double() * 2).float()), {"Cast"}, (4, 5, 5)),
    "Cast-batch-size": (Lambda(lambda x: x * x.shape[0]), {"Mul"}, (4, 5, 5)),  # no shape path
    "Gather-class-token": (Lambda(lambda x: x[:, 0]), {"Gather"}, (5, 6)),
    "Gather-inner-axis": (Lambda(lambda x: x[:, :, 2]), {"Gather"}, (4, 5, 5)),
    "Gather-repeated": (Lambda(lambda x: x[:, [0, 0, 2]]), {"Gather"}, (4, 5, 5)),
    "Gather-last-axis": (Lambda(lambda x: x[..., [-1, 1, 1]]), {"Gather"}, (4, 5, 5)),
    "Split-one-output": (Lambda(lambda x: x.split([1, 3], dim=1)[1]), {"Split"}, (4, 5, 5)),
    "Split-both-outputs": (Lambda(lambda x: torch.cat(x.split([2, 3], dim=2)[::-1], 2)),
                           {"Split"}, (4, 5, 5)),
    "MatMul-attention": (Lambda(lambda x: torch.softmax(x @ x.transpose(-1, -2) / 2, -1) @ x),
                         {"MatMul", "Softmax", "Transpose"}, (4, 5, 6)),
    "MatMul-broadcast-heads": (Lambda(lambda x: x @ x[:, :1].transpose(-1, -2)), {"MatMul"},
                               (4, 5, 6)),
    "MatMul-constant-left": (Lambda(lambda x, p: p @ x, param(3, 5)), {"MatMul"}, (4, 5, 6)),
    "MatMul-constant-3d": (Lambda(lambda x, p: x @ p, param(4, 6, 3)), {"MatMul"}, (4, 5, 6)),
    "Sdpa": (Lambda(lambda x: F.scaled_dot_product_attention(x, x, x)),
             {"MatMul", "Softmax", "Transpose"}, (2, 5, 6)),
    "LayerNormalization-tokens": (affine(nn.LayerNorm(6)), {"LayerNormalization"}, (5, 6)),
    "LayerNormalization-two-axes": (affine(nn.LayerNorm([5, 5])), {"LayerNormalization"},
                                    (4, 5, 5)),
}

HAND_BUILT_MORE = {  # name: (ONNX node x → y, constant inputs, torch equivalent, covers, shape)
    "Sum": (helper.make_node("Sum", ["x", "x", "c"], ["y"]),
            {"c": np.linspace(-1, 1, 5, dtype=np.float32)},
            lambda x, c: 2 * x + c["c"], {"Sum"}, (4, 5, 5)),
    "Split-num-outputs": (helper.make_node("Split", ["x"], ["y", "rest"], axis=2, num_outputs=2),
                          {}, lambda x, c: x[:, :, :3], {"Split"}, (4, 5, 5)),
    "HardSigmoid-alpha-beta": (helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.25, beta=0.5),
                               {}, lambda x, c: torch.clamp(0.25 * x + 0.5, 0, 1),
                               {"HardSigmoid"}, (4, 5, 5)),
}
COVERED_MORE = set().union(*(case[1] for case in CASES_MORE.values()),
                           *(case[3] for case in HAND_BUILT_MORE.values()))


def gradients_at(graph, x: torch.Tensor) -> np.ndarray:
    extended = append_gradients(graph, "x", "logits")
    sess = ort.InferenceSession(extended.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([GRADIENTS], {"x": x.numpy()})[0]


@pytest.mark.parametrize("name", list(CASES_MORE))
def test_rule_matches_autograd(name):
    op, covers, shape, *special = CASES_MORE[name]
    # TensorRT has no double: the lint rightly flags the gradient's cast back
    graph, module = check_case(name, op, covers, shape, tensorrt=name != "Cast-double")
    if special:
        x = special[0](shape)
        expected = autograd_jacobian(module, x)
        assert np.abs(gradients_at(graph, x) - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("name", list(HAND_BUILT_MORE))
def test_hand_built_rule_matches_autograd(name):
    check_hand_built(name, HAND_BUILT_MORE[name])


@pytest.mark.parametrize(("op", "kinks", "slopes"), [
    (nn.Hardswish(), [-3.0, 3.0], [0.0, 1.0]),
    (nn.Hardsigmoid(), [-3.0, 3.0], [0.0, 0.0]),
    (nn.ReLU6(), [0.0, 6.0], [0.0, 0.0]),
    (Lambda(lambda x: x.clamp(-1.0, 1.0)), [-1.0, 1.0], [0.0, 0.0]),
])
def test_slope_at_kinks_is_pytorchs(op, kinks, slopes):
    """The values the rules pin, spelled out: the slope of ``op`` at the kinks themselves."""
    module = Lambda(lambda x, w: op(x) @ w, nn.Parameter(torch.ones(len(kinks), K)))
    x = torch.tensor([kinks])
    got = gradients_at(export(module, torch.zeros(2, len(kinks))), x)[0, 0]
    assert got.tolist() == slopes == autograd_jacobian(module, x)[0, 0].tolist()


class TransformerTail(nn.Module):
    """A torchvision ViT's last encoder block, final LayerNorm, class token and head."""

    def __init__(self):
        super().__init__()
        self.block = EncoderBlock(2, 8, 16, 0.0, 0.0)
        self.ln = affine(nn.LayerNorm(8))
        self.head = nn.Linear(8, K)

    def forward(self, x):
        return self.head(self.ln(self.block(x))[:, 0])


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_vision_transformer_block_matches_autograd(dynamo):
    """All of it at once — LayerNorm, q/k/v Gather, attention MatMul, Softmax, GELU, the class
    token — from either exporter, at a fixed batch (a dynamic one routes Shape tensors into the
    target shapes of Reshape nodes, which the Reshape rule refuses)."""
    torch.manual_seed(3)
    module = TransformerTail().eval()
    x = fresh_input((5, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            graph = torch.onnx.export(module, (x,), dynamo=True, opset_version=18, verbose=False,
                                      input_names=["x"], output_names=["logits"]).model_proto
        else:
            buf = io.BytesIO()
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=18,
                              input_names=["x"], output_names=["logits"])
            graph = onnx.load_from_string(buf.getvalue())
    graph = fold_constants(graph)
    ops = {n.op_type for n in path_nodes(graph.graph, "x", "logits")}
    assert {"LayerNormalization", "Gather", "MatMul", "Softmax", "Erf", "Div"} <= ops
    expected = autograd_jacobian(module, x)
    got = gradients_at(graph, x)
    assert np.linalg.norm(got - expected) <= 1e-5 * np.linalg.norm(expected)


def test_every_rule_has_a_case_here_or_in_test_vjp_rules():
    """The rules before issue 27; the later ones are tested in test_vjp_rules_new.py."""
    from test_vjp_rules_new import NEW_CASES

    newer = {name.split("-")[0] for name in NEW_CASES}
    assert set(RULES) - newer <= COVERED | COVERED_MORE, \
        f"no test case for {sorted(set(RULES) - newer - COVERED - COVERED_MORE)}"
