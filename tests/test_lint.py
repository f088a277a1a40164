"""The TensorRT lint: ops of TensorRT 10's ONNX operator matrix pass, and each problem is one
message naming the node, its op and the reason."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bincam.export.lint import SUPPORTED, UNSUPPORTED, lint_tensorrt

F = TensorProto.FLOAT
F32 = np.float32


def model(nodes, inputs=(("x", [1, 4, 8, 8]),), outputs=("y",), inits=(), functions=()):
    """A float graph; an output is a name or ``(name, shape)``."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
        [helper.make_tensor_value_info(o, F, None) if isinstance(o, str)
         else helper.make_tensor_value_info(o[0], F, o[1]) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid("custom", 1)],
                             functions=list(functions))


def test_transformer_and_shuffle_ops_pass():
    """Split, Softmax, Erf, LayerNormalization, Gather, Where, … as classifiers have them."""
    nodes = [
        helper.make_node("Split", ["x", "halves"], ["a", "b"], name="split", axis=1),
        helper.make_node("Concat", ["b", "a"], ["c"], name="cat", axis=1),
        helper.make_node("Reshape", ["c", "tokens"], ["t"], name="tok"),
        helper.make_node("LayerNormalization", ["t", "gamma", "beta"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "n_t"], ["s"], name="qk"),
        helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
        helper.make_node("Erf", ["p"], ["e"], name="erf"),
        helper.make_node("Greater", ["e", "half"], ["mask"], name="gt"),
        helper.make_node("Where", ["mask", "e", "half"], ["w"], name="where"),
        helper.make_node("Gather", ["w", "first"], ["g"], name="gather", axis=1),
        helper.make_node("ReduceMean", ["g", "last"], ["m"], name="mean", keepdims=0),
        helper.make_node("Slice", ["m", "zero", "two", "last"], ["sl"], name="slice"),
        helper.make_node("Clip", ["sl", "lo", "hi"], ["cl"], name="clip"),
        helper.make_node("Unsqueeze", ["cl", "last"], ["y"], name="unsq"),
    ]
    inits = [("halves", np.array([2, 2], np.int64)), ("tokens", np.array([1, 4, 64], np.int64)),
             ("gamma", np.ones(64, np.float32)), ("beta", np.zeros(64, np.float32)),
             ("n_t", np.ones((64, 4), np.float32)), ("half", np.float32(0.5)),
             ("first", np.array(0, np.int64)), ("last", np.array([-1], np.int64)),
             ("zero", np.array([0], np.int64)), ("two", np.array([2], np.int64)),
             ("lo", np.float32(0)), ("hi", np.float32(6))]
    m = model(nodes, outputs=[("y", [1, 1])], inits=inits)
    onnx.checker.check_model(m, full_check=True)
    assert lint_tensorrt(m) == []


def test_constant_node_inputs_count_as_build_time_constants():
    """TensorRT parses a Constant node's output as weights, like an initializer."""
    w = numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Constant", [], ["w"], name="w", value=w),
             helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", strides=[2, 2])]
    assert lint_tensorrt(model(nodes)) == []


@pytest.mark.parametrize("nodes, expected", [
    ([helper.make_node("MaxPool", ["x"], ["y", "idx"], name="mp1", kernel_shape=[2, 2])],
     "MaxPool node 'mp1': TensorRT does not support its Indices output"),
    ([helper.make_node("Unique", ["x"], ["y"], name="uniq")],
     "Unique node 'uniq': TensorRT's ONNX parser does not support Unique"),
    ([helper.make_node("Foo", ["x"], ["y"], name="foo", domain="custom")],
     "Foo node 'foo': custom domain 'custom'; TensorRT needs a plugin registered for it"),
    ([helper.make_node("Binarizer", ["x"], ["y"], name="bin")],
     "Binarizer node 'bin': Binarizer is not in TensorRT's ONNX operator matrix"),
    ([helper.make_node("Shape", ["x"], ["rank_axes"], name="shape", start=-1),
      helper.make_node("Sub", ["rank_axes", "five"], ["axes"], name="sub"),
      helper.make_node("Slice", ["x", "zero", "two", "axes"], ["y"], name="sl")],
     "Slice node 'sl': axes must be a build-time constant (an initializer or a Constant node) "
     "for TensorRT before 10.3"),
    ([helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"], name="ln")],
     "LayerNormalization node 'ln': TensorRT supports only its first output Y (not Mean or "
     "InvStdDev)"),
    ([helper.make_node("AveragePool", ["x"], ["y"], name="pool1d", kernel_shape=[2])],
     "AveragePool node 'pool1d': 1-D kernel; TensorRT takes 2-D or 3-D pooling only"),
    ([helper.make_node("Cast", ["x"], ["y"], name="to64", to=TensorProto.DOUBLE)],
     "Cast node 'to64': casts to DOUBLE, a type TensorRT lacks"),
    ([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="cubic")],
     "Resize node 'up': mode 'cubic'; TensorRT takes nearest, linear"),
    ([helper.make_node("Clip", ["x", "", "x"], ["y"], name="clip")],
     "Clip node 'clip': max must be a build-time constant (an initializer or a Constant node)"),
    ([helper.make_node("ConvTranspose", ["x", "x"], ["y"], name="up")],
     "ConvTranspose node 'up': weights W must be a build-time constant (an initializer or a "
     "Constant node)"),
    ([helper.make_node("Attention", ["x", "x", "x"], ["y"], name="attn")],
     "Attention node 'attn': needs TensorRT 10.14 or later; this lint holds for every TensorRT 10"),
], ids=["maxpool-indices", "unique", "custom-domain", "unknown-op", "slice-tensor-axes",
        "layernorm-mean", "1d-pool", "cast-double", "resize-cubic", "clip-tensor-max",
        "deconv-tensor-weights", "attention-10.14"])
def test_one_message_names_node_op_and_reason(nodes, expected):
    inits = [("five", np.array([5], np.int64)), ("zero", np.array([0], np.int64)),
             ("two", np.array([2], np.int64)), ("g", np.ones(8, np.float32)),
             ("scales", np.array([1, 1, 2, 2], np.float32))]
    outputs = [o for n in nodes[-1:] for o in n.output if o]
    assert lint_tensorrt(model(nodes, outputs=outputs, inits=inits)) == [expected]


def test_subgraphs_and_local_functions_are_linted():
    then = helper.make_graph([helper.make_node("NonZero", ["x"], ["nz"], name="nz"),
                              helper.make_node("Unique", ["x"], ["u"], name="u")], "then", [],
                             [helper.make_tensor_value_info("u", F, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["i"], name="i")], "else", [],
                              [helper.make_tensor_value_info("i", F, None)])
    fn = helper.make_function("local", "Act", ["a"], ["b"],
                              [helper.make_node("Unique", ["a"], ["b"], name="inner")],
                              [helper.make_opsetid("", 18)])
    nodes = [helper.make_node("Act", ["x"], ["h"], name="act", domain="local"),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then,
                              else_branch=other)]
    m = model(nodes, inputs=(("x", [4]), ("cond", [])), functions=[fn])
    problems = lint_tensorrt(m)
    assert problems == ["Unique node 'act/inner': TensorRT's ONNX parser does not support Unique",
                        "Unique node 'branch/u': TensorRT's ONNX parser does not support Unique"]


def test_table():
    """Rows marked N are refused, the ops bincam's gradient pass emits are supported, and every
    restriction is text or None."""
    assert UNSUPPORTED.isdisjoint(SUPPORTED)
    for op in ("Split", "Softmax", "LayerNormalization", "Erf", "Pow", "Sqrt", "Tanh", "Div",
               "Where", "Expand", "CumSum", "ScatterElements", "Range", "ConstantOfShape",
               "Shape", "Cast", "Equal", "Less", "Greater", "And", "Or", "Not", "ReduceSum",
               "ReduceProd", "ReduceMax", "ReduceMin", "HardSwish", "HardSigmoid", "NonZero",
               "Gather", "Resize", "ConvTranspose", "Clip", "MaxPool", "Gelu"):
        assert op in SUPPORTED, op
    assert {"Unique", "NonMaxSuppression"} & UNSUPPORTED == {"Unique"}
    assert all(v is None or isinstance(v, str) for v in SUPPORTED.values())


def test_a_1d_convolution_passes_and_a_4d_one_is_flagged():
    """ECA attention's Conv1d (timm eca_nfnet_l0): TensorRT 10's matrix lists Conv without the
    8.4 matrix's "2-D or 3-D only"; issue 27 found it refused for that."""
    conv1d = helper.make_node("Conv", ["x", "w"], ["y"], name="eca", kernel_shape=[3],
                              pads=[1, 1])
    conv4d = helper.make_node("Conv", ["x", "w"], ["y"], name="c4", kernel_shape=[1, 1, 1, 1])
    one = model([conv1d], inputs=(("x", [1, 1, 8]),), inits=(("w", np.ones((1, 1, 3), F32)),))
    four = model([conv4d], inputs=(("x", [1, 1, 2, 2, 2, 2]),),
                 inits=(("w", np.ones((1, 1, 1, 1, 1, 1), F32)),))
    assert lint_tensorrt(one) == []
    assert lint_tensorrt(four) == [
        "Conv node 'c4': 4-D kernel; TensorRT takes 1-D to 3-D convolutions only"]
