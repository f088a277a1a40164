"""Every VJP rule at every opset it claims (13–21): the gradient graph it appends to a one-op model
of that opset passes the full ONNX checker, loads in ONNX Runtime and equals float64 autograd.

Each case builds its forward node(s) in the form the opset takes (axes as attribute or input …);
a rule that emits a node form its opset lacks (``ReduceMean`` with axes as an input at opset 17,
say) fails here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from bincam.errors import OwnGraphError
from bincam.export.lint import SUPPORTED, lint_tensorrt
from bincam.export.opset import OPSETS, axes_as_input
from bincam.export.rules import RULES
from bincam.export.vjp import GRADIENTS, append_gradients

K = 3
N = helper.make_node


@dataclass
class Case:
    """``nodes(opset) → (nodes x → y, constants)``; ``torch_fn(x, constants)`` the same in torch;
    ``inputs(shape)``: the test input (default: normal); ``since``: the first opset of the op."""
    nodes: Callable
    torch_fn: Callable
    shape: tuple
    covers: set = field(default_factory=set)
    since: int = 13
    inputs: Callable | None = None
    tensorrt: bool = True  # the gradient nodes pass the TensorRT lint


def with_axes(op, inputs, output, axes, opset, **attrs):
    """``op`` over ``axes`` as the opset takes them; returns ``(node, constants)``."""
    if axes_as_input(op, opset):
        name = f"{output}_axes"
        return N(op, [*inputs, name], [output], **attrs), {name: np.array(axes, np.int64)}
    return N(op, inputs, [output], axes=axes, **attrs), {}


def single(op, *const_names, **attrs):
    """A one-node case builder ``x, c… → y`` with no opset-dependent form."""
    return lambda opset: ([N(op, ["x", *const_names], ["y"], **attrs)], {})


_rng = np.random.default_rng(0)


def rand(*shape, lo=-1.0, hi=1.0):
    return _rng.uniform(lo, hi, size=shape).astype(np.float32)


def consts(nodes, **values):
    """A case builder whose constants do not depend on the opset."""
    return lambda opset: (nodes(opset) if callable(nodes) else nodes, values)


def _reduce(op, axes, keepdims):
    def make(opset):
        node, c = with_axes(op, ["x"], "y", axes, opset, keepdims=keepdims)
        return [node], c
    return make


BN = {"s": rand(4, lo=0.5, hi=2), "bb": rand(4), "m": rand(4), "v": rand(4, lo=0.5, hi=2)}
LN = {"g": rand(5, lo=0.5, hi=2), "be": rand(5)}
GEMM = {"W": rand(20, 6), "C": rand(6)}
CONV = {"W": rand(6, 4, 3, 3)}


def _split(opset):
    if opset >= 18:
        return [N("Split", ["x"], ["y", "rest"], axis=2, num_outputs=2)], {}
    return [N("Split", ["x", "sizes"], ["y", "rest"], axis=2)], {"sizes": np.array([3, 2],
                                                                                      np.int64)}


def _squeeze(opset):
    node, c = with_axes("Squeeze", ["x"], "y", [2], opset)
    return [node], c


def _unsqueeze(opset):
    node, c = with_axes("Unsqueeze", ["x"], "y", [2], opset)
    return [node], c


def _clip(opset):
    return [N("Clip", ["x", "lo", "hi"], ["y"])], {"lo": np.array(-0.5, np.float32),
                                                    "hi": np.array(0.75, np.float32)}


def _masks(opset):
    return [N("Greater", ["x", "zero"], ["p"]), N("LessOrEqual", ["x", "one"], ["q"]),
            N("And", ["p", "q"], ["pq"]), N("Equal", ["x", "mone"], ["e"]),
            N("Or", ["pq", "e"], ["m"]), N("Less", ["x", "two"], ["l"]), N("Not", ["l"], ["nl"]),
            N("Or", ["m", "nl"], ["m2"]), N("GreaterOrEqual", ["x", "mtwo"], ["ge"]),
            N("And", ["m2", "ge"], ["m3"]), N("Neg", ["x"], ["nx"]),
            N("Where", ["m3", "x", "nx"], ["y"])], {
        "zero": np.array(0, np.float32), "one": np.array(1, np.float32),
        "mone": np.array(-1, np.float32), "two": np.array(2, np.float32),
        "mtwo": np.array(-2, np.float32)}


def _masks_torch(x, c):
    m = ((x > 0) & (x <= 1)) | (x == -1) | ~(x < 2)
    return torch.where(m & (x >= -2), x, -x)


def at(*values):
    """Normal inputs with every other element set to ``values`` in turn (kinks, ties)."""
    def make(shape):
        x = torch.randn(5, *shape, dtype=torch.float64)
        every_other = x.view(-1)[::2]
        every_other.copy_(torch.tensor(values, dtype=torch.float64).repeat(
            every_other.numel())[:every_other.numel()])
        return x
    return make


OPSET_CASES: dict[str, Case] = {
    "Identity": Case(single("Identity"), lambda x, c: x, (4, 5, 5)),
    "Flatten": Case(single("Flatten", axis=1), lambda x, c: x.flatten(1), (4, 5, 5)),
    "Reshape": Case(consts([N("Reshape", ["x", "shape"], ["y"])],
                           shape=np.array([0, 20, 5], np.int64)),
                    lambda x, c: x.reshape(len(x), 20, 5), (4, 5, 5)),
    "Squeeze": Case(_squeeze, lambda x, c: x.squeeze(2), (4, 1, 5)),
    "Unsqueeze": Case(_unsqueeze, lambda x, c: x.unsqueeze(2), (4, 5)),
    "Relu": Case(single("Relu"), lambda x, c: F.relu(x), (4, 5, 5), inputs=at(0.0)),
    "Sigmoid": Case(single("Sigmoid"), lambda x, c: torch.sigmoid(x), (4, 5, 5)),
    "Add": Case(consts([N("Add", ["x", "c"], ["y"])], c=rand(4, 1, 1)),
                lambda x, c: x + c["c"], (4, 5, 5)),
    "Sub": Case(consts([N("Sub", ["c", "x"], ["y"])], c=rand(4, 5, 5)),
                lambda x, c: c["c"] - x, (4, 5, 5)),
    "Mul": Case(consts([N("Mul", ["x", "x"], ["y"])]), lambda x, c: x * x, (4, 5, 5)),
    "BatchNormalization": Case(consts([N("BatchNormalization", ["x", "s", "bb", "m", "v"],
                                         ["y"])], **BN),
                               lambda x, c: F.batch_norm(x, c["m"], c["v"], c["s"], c["bb"]),
                               (4, 5, 5)),
    "Gemm": Case(consts([N("Gemm", ["x", "W", "C"], ["y"], alpha=0.5, beta=2.0)], **GEMM),
                 lambda x, c: 0.5 * x @ c["W"] + 2.0 * c["C"], (20,)),
    "MatMul": Case(consts([N("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
                           N("MatMul", ["x", "xt"], ["y"])]),
                   lambda x, c: x @ x.transpose(1, 2), (5, 6), {"MatMul", "Transpose"}),
    "GlobalAveragePool": Case(single("GlobalAveragePool"),
                              lambda x, c: x.mean((2, 3), keepdim=True), (4, 5, 5)),
    "ReduceMean": Case(_reduce("ReduceMean", [2, 3], 0), lambda x, c: x.mean((2, 3)), (4, 5, 5)),
    "ReduceSum": Case(_reduce("ReduceSum", [-1], 1), lambda x, c: x.sum(-1, keepdim=True),
                      (4, 5, 5)),
    "Conv": Case(consts([N("Conv", ["x", "W"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])],
                        **CONV), lambda x, c: F.conv2d(x, c["W"], stride=2, padding=1),
                 (4, 9, 9)),
    "Concat": Case(consts([N("Concat", ["x", "x"], ["y"], axis=1)]),
                   lambda x, c: torch.cat([x, x], 1), (4, 5, 5)),
    "Slice": Case(consts([N("Slice", ["x", "st", "en", "ax"], ["y"])],
                         st=np.array([1, 2], np.int64), en=np.array([3, 5], np.int64),
                         ax=np.array([1, 3], np.int64)),
                  lambda x, c: x[:, 1:3, :, 2:5], (4, 5, 5)),
    "Slice-steps": Case(consts([N("Slice", ["x", "st", "en", "ax", "sp"], ["y"])],
                               st=np.array([1, -1, 0], np.int64),
                               en=np.array([2**63 - 1, -100, 9], np.int64),
                               ax=np.array([1, 2, 3], np.int64), sp=np.array([2, -2, 3], np.int64)),
                        lambda x, c: x[:, 1::2].flip(2)[:, :, ::2][..., ::3], (5, 6, 7)),
    "Pad": Case(consts([N("Pad", ["x", "pads"], ["y"], mode="constant")],
                       pads=np.array([0, 0, 1, 2, 0, 0, 1, 0], np.int64)),
                lambda x, c: F.pad(x, (2, 0, 1, 1)), (4, 5, 5)),
    "MaxPool": Case(single("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                    lambda x, c: F.max_pool2d(x, 3, 2, 1), (4, 8, 8),
                    inputs=lambda s: F.relu(torch.randn(5, *s, dtype=torch.float64) - 1)),
    "AveragePool": Case(single("AveragePool", kernel_shape=[3, 3], strides=[2, 2],
                               pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1),
                        lambda x, c: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True), (4, 8, 8)),
    "Transpose": Case(single("Transpose", perm=[0, 2, 3, 1]), lambda x, c: x.permute(0, 2, 3, 1),
                      (4, 5, 6)),
    "HardSwish": Case(single("HardSwish"), lambda x, c: F.hardswish(x), (4, 5, 5),
                      inputs=at(-3.0, 3.0, 0.0), since=14),
    "HardSigmoid": Case(single("HardSigmoid", alpha=1 / 6, beta=0.5),
                        lambda x, c: F.hardsigmoid(x), (4, 5, 5), inputs=at(-3.0, 3.0, 0.0)),
    "Clip": Case(_clip, lambda x, c: x.clamp(-0.5, 0.75), (4, 5, 5), inputs=at(-0.5, 0.75)),
    "Div": Case(consts([N("Mul", ["x", "x"], ["xx"]), N("Add", ["xx", "one"], ["d"]),
                        N("Div", ["x", "d"], ["y"])], one=np.array(1, np.float32)),
                lambda x, c: x / (x * x + 1), (4, 5, 5), {"Div", "Add", "Mul"}),
    "Erf": Case(single("Erf"), lambda x, c: torch.erf(x), (4, 5, 5)),
    "Pow": Case(consts([N("Pow", ["x", "p"], ["y"])], p=np.array(3, np.float32)),
                lambda x, c: x ** 3, (4, 5, 5)),
    "Sqrt": Case(consts([N("Mul", ["x", "x"], ["xx"]), N("Add", ["xx", "h"], ["s"]),
                         N("Sqrt", ["s"], ["y"])], h=np.array(0.5, np.float32)),
                 lambda x, c: torch.sqrt(x * x + 0.5), (4, 5, 5)),
    "Tanh": Case(single("Tanh"), lambda x, c: torch.tanh(x), (4, 5, 5)),
    "Neg": Case(single("Neg"), lambda x, c: -x, (4, 5, 5)),
    "Where-masks": Case(_masks, _masks_torch, (4, 5, 5),
                        {"Where", "Greater", "LessOrEqual", "And", "Equal", "Or", "Less", "Not",
                         "GreaterOrEqual", "Neg"}, inputs=at(0.0, 1.0, -1.0, 2.0, -2.0)),
    "Expand": Case(consts([N("Expand", ["x", "shape"], ["y"])],
                          shape=np.array([1, 4, 3, 5], np.int64)),
                   lambda x, c: x.expand(-1, -1, 3, -1), (4, 1, 5)),
    "Sum": Case(consts([N("Sum", ["x", "x", "c"], ["y"])], c=rand(5)),
                lambda x, c: 2 * x + c["c"], (4, 5, 5)),
    "Max": Case(consts([N("Max", ["x", "z"], ["y"])], z=np.zeros((4, 1, 5), np.float32)),
                lambda x, c: torch.maximum(x, c["z"]), (4, 5, 5), inputs=at(0.0)),
    "Min": Case(consts([N("Mul", ["x", "two"], ["x2"]), N("Min", ["x", "x2"], ["y"])],
                       two=np.array(2, np.float32)),
                lambda x, c: torch.minimum(x, 2 * x), (4, 5, 5), inputs=at(0.0)),
    "Softmax": Case(single("Softmax", axis=1), lambda x, c: torch.softmax(x, 1), (4, 5, 5)),
    "Cast": Case(lambda opset: ([N("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
                                 N("Cast", ["d"], ["y"], to=TensorProto.FLOAT)], {}),
                 lambda x, c: x, (4, 5, 5), tensorrt=False),  # TensorRT has no double
    "Gather": Case(consts([N("Gather", ["x", "i"], ["y"], axis=1)],
                          i=np.array([0, 0, -1], np.int64)), lambda x, c: x[:, [0, 0, -1]],
                   (4, 5, 5)),
    "Gather-rank3": Case(consts([N("Gather", ["x", "i"], ["y"], axis=2)],
                                i=np.array([[[0, -1]], [[4, 4]]], np.int64)),
                         lambda x, c: x[:, :, c["i"]], (4, 5, 3)),
    "Split": Case(_split, lambda x, c: x[:, :, :3], (4, 5, 5)),
    "LayerNormalization": Case(consts([N("LayerNormalization", ["x", "g", "be"], ["y"],
                                         axis=-1)], **LN),
                               lambda x, c: F.layer_norm(x, (5,), c["g"], c["be"]), (4, 5),
                               since=17),
}


def build(case: Case, opset: int, head: np.ndarray) -> onnx.ModelProto:
    """``x → case's nodes → y → Flatten → MatMul(head) → logits`` at ``opset``."""
    nodes, values = case.nodes(opset)
    nodes = [*nodes, N("Flatten", ["y"], ["f"], axis=1), N("MatMul", ["f", "head"], ["logits"])]
    inits = [numpy_helper.from_array(v, k) for k, v in {**values, "head": head}.items()]
    graph = helper.make_graph(
        nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *case.shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", K])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=min(onnx.IR_VERSION, 10))


def as_torch(values: dict) -> dict:
    """Constants as float64 tensors (integer ones as they are)."""
    return {k: torch.from_numpy(v.astype(np.float64) if v.dtype == np.float32 else v)
            for k, v in values.items()}


def reference(case: Case, opset: int, head: np.ndarray, x: torch.Tensor) -> np.ndarray:
    """``∂logits_k/∂x [B, K, *shape]`` by float64 autograd of ``torch_fn``."""
    c = as_torch(case.nodes(opset)[1])
    w = torch.from_numpy(head.astype(np.float64))
    x = x.clone().requires_grad_(True)
    z = case.torch_fn(x, c).flatten(1) @ w
    rows = [torch.autograd.grad(z[:, k].sum(), x, retain_graph=True)[0] for k in range(K)]
    return torch.stack(rows, 1).numpy()


def check_at_opset(name: str, case: Case, opset: int, checker: bool = True) -> None:
    """``case`` at ``opset``: the forward (``checker``) and the extended graph pass the full
    checker, the gradient nodes are on TensorRT's list and pass its lint, and the gradients equal
    float64 autograd."""
    torch.manual_seed(zlib.crc32(name.encode()) % 1000)
    x = case.inputs(case.shape) if case.inputs else torch.randn(5, *case.shape, dtype=torch.float64)
    features = case.torch_fn(x[:1], as_torch(case.nodes(opset)[1])).flatten(1).shape[1]
    head = np.random.default_rng(1).normal(size=(features, K)).astype(np.float32)
    model = build(case, opset, head)
    if checker:
        onnx.checker.check_model(model, full_check=True)      # the forward form is the opset's
    extended = append_gradients(model, "x", "logits")
    if checker:
        onnx.checker.check_model(extended, full_check=True)
    new_nodes = extended.graph.node[len(model.graph.node):]
    added = {n.op_type for n in new_nodes}
    assert added <= set(SUPPORTED), f"{name}: {sorted(added - set(SUPPORTED))} not TensorRT's"
    problems = [p for p in lint_tensorrt(extended) if any(f"'{n.name}'" in p for n in new_nodes)]
    assert problems == [] or not case.tensorrt, problems
    sess = ort.InferenceSession(extended.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run([GRADIENTS], {"x": x.float().numpy()})[0]
    expected = reference(case, opset, head, x.float().double())
    assert got.shape == expected.shape
    err = np.linalg.norm(got - expected) / max(np.linalg.norm(expected), 1e-12)
    assert err <= 1e-5, f"{name} at opset {opset}: relative L2 {err:.2e}"


@pytest.mark.parametrize(("name", "opset"), [(n, o) for n, c in OPSET_CASES.items()
                                             for o in OPSETS if o >= c.since])
def test_rule_graph_is_valid_and_right_at_opset(name, opset):
    check_at_opset(name, OPSET_CASES[name], opset)


def opset_covered() -> set[str]:
    """The op types the opset cases here and in test_vjp_rules_new.py cover."""
    from test_vjp_rules_new import NEW_CASES

    cases = {**OPSET_CASES, **NEW_CASES}
    return set().union(*({n.split("-")[0]} | c.covers for n, c in cases.items()))


def test_every_rule_has_an_opset_case():
    covered = opset_covered()
    assert set(RULES) <= covered, f"no opset case for {sorted(set(RULES) - covered)}"


def test_layer_norm_at_opset_17_regression():
    """timm's ViT/DeiT/Swin/ConvNeXt at opset 17: the LayerNorm rule emitted ReduceMean with its
    axes as an input (opset ≥ 18 only), an invalid graph."""
    model = build(OPSET_CASES["LayerNormalization"], 17, rand(20, K))
    extended = append_gradients(model, "x", "logits")
    means = [n for n in extended.graph.node if n.op_type == "ReduceMean"]
    assert means and all(len(n.input) == 1 and any(a.name == "axes" for a in n.attribute)
                         for n in means)


def test_an_invalid_node_of_a_rule_is_reported_as_bincams(monkeypatch):
    """A rule emitting a node its opset lacks is bincam's bug, named as such with the node."""
    def bad_rule(b, node, dys, wanted):
        return {node.input[0]: b.node("ReduceMean", [dys[node.output[0]],
                                                     b.const([1], "axes", np.int64)], "bad")}
    monkeypatch.setitem(RULES, "Identity", bad_rule)
    model = build(OPSET_CASES["Identity"], 17, rand(100, K))
    with pytest.raises(OwnGraphError, match=r"^bincam's appended gradient graph is invalid "
                       r"\(node 'vjp/bad/\d+' ReduceMean at opset 17: .*input size 2.*please "
                       r"report"):
        append_gradients(model, "x", "logits")


def _exported_file(tmp_path, opset: int = 17) -> onnx.ModelProto:
    """A foreign classifier at ``opset`` (Conv → Relu 'act' → LayerNorm over channels → mean →
    Gemm) exported with dense gradients at 'act'."""
    from bincam.export.model import export_onnx_classifier

    nodes = [N("Conv", ["x", "W"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
             N("Relu", ["conv"], ["act"], name="relu"),
             N("Transpose", ["act"], ["nhwc"], perm=[0, 2, 3, 1], name="to_nhwc"),
             N("LayerNormalization", ["nhwc", "g", "be"], ["ln"], axis=-1, name="ln"),
             N("ReduceMean", ["ln"], ["pooled"], axes=[1, 2], keepdims=0, name="pool"),
             N("Gemm", ["pooled", "fc", "fb"], ["scores"], transB=1, name="fc")]
    inits = {"W": rand(6, 3, 3, 3), "g": rand(6, lo=0.5, hi=2), "be": rand(6),
             "fc": rand(2, 6), "fb": rand(2)}
    graph = helper.make_graph(
        nodes, "foreign", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", 2])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                ir_version=9), tmp_path / "foreign.onnx")
    return export_onnx_classifier(tmp_path / "foreign.onnx", "act", "scores", gradients="dense")


def test_exported_file_at_opset_17_loads(tmp_path):
    """The issue's failure end to end: LayerNorm at opset 17 exported and loaded by the engine."""
    from bincam.runtime.ort_engine import OrtEngine

    model = _exported_file(tmp_path)
    out = OrtEngine(model.SerializeToString()).run(np.random.default_rng(0).random(
        (2, 3, 8, 8), dtype=np.float32))
    assert out["gradients"].shape == (2, 2, 6, 8, 8) and np.isfinite(out["gradients"]).all()


def test_load_failure_of_bincams_nodes_is_worded_as_bincams(tmp_path):
    """An appended node that ONNX Runtime rejects (the old LayerNorm rule's ReduceMean with axes
    as an input at opset 17): bincam's error, never 'not a loadable ONNX model'."""
    from bincam.runtime.ort_engine import OrtEngine

    model = _exported_file(tmp_path)
    mean = next(n for n in model.graph.node if n.op_type == "ReduceMean"
                and n.name.startswith("vjp/"))
    axes = next(a for a in mean.attribute if a.name == "axes")
    model.graph.initializer.append(numpy_helper.from_array(np.array(axes.ints, np.int64),
                                                           "old_axes"))
    mean.attribute.remove(axes)
    mean.input.append("old_axes")
    with pytest.raises(OwnGraphError, match=r"^bincam's appended gradient graph is invalid "
                       r"\(the model: .*\); please report") as err:
        OrtEngine(model.SerializeToString())
    assert "not a loadable" not in str(err.value)


def test_load_failure_of_the_users_nodes_is_the_users(tmp_path):
    """The same file with one of the user's own nodes broken: the model's error, as before."""
    from bincam.errors import BincamError
    from bincam.runtime.ort_engine import OrtEngine

    model = _exported_file(tmp_path)
    conv = next(n for n in model.graph.node if n.name == "conv")
    conv.input[1] = "no_such_weight"
    with pytest.raises(BincamError, match="the model is not a loadable ONNX model") as err:
        OrtEngine(model.SerializeToString())
    assert not isinstance(err.value, OwnGraphError)


def test_load_failure_without_the_node_named_is_still_bincams(tmp_path):
    """An ORT message that names no node: the user's part alone loads, so the fault is ours."""
    from bincam.core.own_graph import load_failure

    model = _exported_file(tmp_path)
    error = load_failure(model.SerializeToString(), RuntimeError("something failed"), "m.onnx")
    assert isinstance(error, OwnGraphError) and "(m.onnx: something failed)" in str(error)
    plain = build(OPSET_CASES["Relu"], 17, rand(100, K))  # no bincam node: the model's
    error = load_failure(plain.SerializeToString(), RuntimeError("bad"), "m.onnx")
    assert not isinstance(error, OwnGraphError) and "m.onnx is not a loadable ONNX model (bad)" \
        in str(error)


def test_a_type_error_in_bincams_nodes_is_reported_as_bincams(monkeypatch):
    """A node that fits its schema but not its input types (a float times an int64 constant):
    the full checker's failure, named as bincam's."""
    def bad_rule(b, node, dys, wanted):
        return {node.input[0]: b.node("Mul", [dys[node.output[0]], b.const(2, "two", np.int64)],
                                      "bad")}
    monkeypatch.setitem(RULES, "Identity", bad_rule)
    model = build(OPSET_CASES["Identity"], 18, rand(100, K))
    with pytest.raises(OwnGraphError, match=r"^bincam's appended gradient graph is invalid "
                       r"\(.*vjp/bad/\d+"):
        append_gradients(model, "x", "logits")
