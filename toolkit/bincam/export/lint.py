"""TensorRT operator lint: each node of an ONNX graph against the ONNX parser's operator matrix,
checked without TensorRT.

Source: onnx-tensorrt ``docs/operators.md`` for TensorRT 10.15 (the latest 10.x matrix), with its
changelog for what changed within 10.x. bincam supports every TensorRT 10 (``tensorrt>=10``), so a
restriction lifted during 10.x still counts (e.g. tensor ``axes`` of ``Slice``, allowed from 10.3)
and an op added during 10.x is reported with the release it needs. Not checked: data types,
restrictions of control-flow, recurrent-cell and quantization ops beyond those listed.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper, numpy_helper

BUILD_CONSTANT = "must be a build-time constant (an initializer or a Constant node)"

# op -> the restriction checked here (None: supported without a restriction that we check)
SUPPORTED: dict[str, str | None] = dict.fromkeys("""
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh BatchNormalization CastLike Ceil
    Celu Concat ConstantOfShape Cos Cosh DepthToSpace Div Einsum Elu Equal Erf Exp Expand
    EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
    GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid HardSwish Hardmax
    Identity If ImageScaler InstanceNormalization IsInf IsNaN LeakyRelu Less LessOrEqual Log
    LogSoftmax Loop LRN LpNormalization MatMul Max Mean MeanVarianceNormalization Min Mish Mod Mul
    Neg NonMaxSuppression NonZero Not Or ParametricSoftplus Pow PRelu RandomNormal
    RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal Relu Reshape ReverseSequence
    RoiAlign Round ScaledTanh Scan Scatter ScatterElements Selu Shape Shrink Sigmoid Sign Sin Sinh
    Size Softmax Softplus Softsign SpaceToDepth Split Sqrt Sub Sum Tan Tanh ThresholdedRelu Tile
    Transpose Trilu Upsample Where Xor""".split())
REDUCE = ("ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin "
          "ReduceProd ReduceSum ReduceSumSquare").split()
# op -> input position that must be a build-time constant, and what it is called
CONSTANT_INPUTS = {"ConvTranspose": {1: "weights W"}, "Clip": {1: "min", 2: "max"},
                   "CumSum": {1: "axis"}, "Dropout": {2: "training_mode"}, "OneHot": {1: "depth"},
                   "Pad": {3: "axes"}, "Slice": {3: "axes"}, "Squeeze": {1: "axes"},
                   "Unsqueeze": {1: "axes"}, **{op: {1: "axes"} for op in REDUCE}}
# restrictions lifted during 10.x: op -> the release that lifted it
LIFTED = {"Slice": "10.3", "Pad": "10.4", "Squeeze": "10.7", "Unsqueeze": "10.7", "CumSum": "10.8"}
SUPPORTED.update({op: " and ".join(names.values()) + f" {BUILD_CONSTANT}"
                  + (f" (before TensorRT {LIFTED[op]})" if op in LIFTED else "")
                  for op, names in CONSTANT_INPUTS.items()})
SUPPORTED.update({
    "AveragePool": "2-D or 3-D pooling only; dilations all 1",
    "MaxPool": "2-D or 3-D pooling only; dilations all 1; no Indices output",
    "LpPool": "dilations all 1",
    # earlier parsers' rules (the 8.4 matrix; the 7.x Clip importer), kept as conservative checks:
    # TensorRT 10 also takes tensor deconvolution weights and tensor Clip bounds. Not kept: the
    # 8.4 matrix's "2-D or 3-D convolutions only" (the 10.x matrix lists Conv and ConvTranspose
    # without it; the parser lifts a 1-D convolution to 2-D), which refused ECA attention's
    # Conv1d (timm eca_nfnet_l0, ecaresnet) for no reason
    "Conv": "1-D to 3-D convolutions only",
    "ConvTranspose": f"1-D to 3-D deconvolutions only; weights W {BUILD_CONSTANT}",
    "Cast": "only to FLOAT, FLOAT16, BFLOAT16, INT32, INT64, UINT8 or BOOL",
    "Constant": "no sparse_value, value_string or value_strings",
    "Dropout": f"training_mode {BUILD_CONSTANT} and false",
    "LayerNormalization": "only the first output Y",
    "LSTM": "input_forget 0 and layout 0; a bidirectional cell has one set of activations",
    "GRU": "a bidirectional cell has one set of activations",
    "RNN": "a bidirectional cell has one set of activations",
    "QuantizeLinear": "y_zero_point zero", "DequantizeLinear": "x_zero_point zero",
    "Resize": "coordinate transformation half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, "
              "asymmetric or align_corners; mode nearest or linear; nearest mode floor, ceil, "
              "round_prefer_floor or round_prefer_ceil; aspect ratio policy stretch; "
              "no antialiasing; with tensor scales, axes all of the input's",
    "ScatterND": "reduction none",
    "TopK": "sorted 1; K below 3840",
})
# ops the 10.15 matrix supports that earlier 10.x releases do not parse
SINCE = {"DeformConv": "10.1", "BlackmanWindow": "10.4", "HammingWindow": "10.4",
         "HannWindow": "10.4", "STFT": "10.5", "Attention": "10.14", "RMSNormalization": "10.15",
         "RotaryEmbedding": "10.15", "TensorScatter": "10.15"}
SUPPORTED.update({op: f"needs TensorRT {v} or later" for op, v in SINCE.items()})
# rows marked N in the matrix
UNSUPPORTED = frozenset("""
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor CenterCropPad Col2Im
    Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder
    MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss
    Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch
    SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength
    SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit
    TfIdfVectorizer Unique""".split())

CAST_TO = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT32,
           TensorProto.INT64, TensorProto.UINT8, TensorProto.BOOL}
RESIZE = {"coordinate_transformation_mode": (
              "half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
              "align_corners"),
          "mode": ("nearest", "linear"),
          "nearest_mode": ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil"),
          "keep_aspect_ratio_policy": ("stretch",)}


def lint_tensorrt(model: onnx.ModelProto) -> list[str]:
    """Problems TensorRT 10's ONNX parser would have with ``model``, one per node and reason, as
    ``"<op> node '<name>': <reason>"`` (empty list: none found). Subgraphs and model-local
    functions are linted as the parser inlines them."""
    functions = {(f.domain, f.name): f for f in model.functions}
    return _lint_graph(model.graph.node, _values(model.graph, {}), functions, "")


def _values(graph: onnx.GraphProto, outer: dict) -> dict:
    """Build-time constants of ``graph`` (and the scope around it): name → array (or None)."""
    values = dict(outer)
    values.update({i.name: numpy_helper.to_array(i) for i in graph.initializer})
    values.update({n.output[0]: _constant_value(n) for n in graph.node if n.op_type == "Constant"})
    return values


def _constant_value(node: onnx.NodeProto):
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
    return None


def _lint_graph(nodes, values: dict, functions: dict, scope: str) -> list[str]:
    problems = []
    for node in nodes:
        where = f"{node.op_type} node {scope + node.name!r}"
        if (node.domain, node.op_type) in functions:
            body = functions[(node.domain, node.op_type)]
            problems += _lint_graph(body.node, {n.output[0]: _constant_value(n) for n in body.node
                                                if n.op_type == "Constant"}, functions,
                                    f"{scope}{node.name}/")
            continue
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r}; TensorRT needs a plugin "
                            "registered for it")
            continue
        if node.op_type in UNSUPPORTED:
            problems.append(f"{where}: TensorRT's ONNX parser does not support {node.op_type}")
            continue
        if node.op_type not in SUPPORTED:
            problems.append(f"{where}: {node.op_type} is not in TensorRT's ONNX operator matrix")
            continue
        problems += [f"{where}: {reason}" for reason in _reasons(node, values)]
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                problems += _lint_graph(sub.node, _values(sub, values), functions,
                                        f"{scope}{node.name}/")
    return problems


def _reasons(node: onnx.NodeProto, values: dict):
    """Why TensorRT would refuse ``node`` (a known op): the restrictions of ``SUPPORTED``."""
    op = node.op_type
    a = {x.name: _text(helper.get_attribute_value(x)) for x in node.attribute}
    if op in SINCE:
        yield f"{SUPPORTED[op]}; this lint holds for every TensorRT 10"
    for i, what in CONSTANT_INPUTS.get(op, {}).items():
        if i < len(node.input) and node.input[i] and node.input[i] not in values:
            before = f" for TensorRT before {LIFTED[op]}" if op in LIFTED else ""
            yield f"{what} {BUILD_CONSTANT}{before}"
    if op in ("Conv", "ConvTranspose"):
        weight = values.get(node.input[1]) if len(node.input) > 1 else None
        kernel = a.get("kernel_shape", weight.shape[2:] if weight is not None else None)
        if kernel is not None and len(kernel) > 3:
            yield f"{len(kernel)}-D kernel; TensorRT takes 1-D to 3-D convolutions only"
    if op in ("AveragePool", "MaxPool"):
        kernel = a.get("kernel_shape")
        if kernel is not None and len(kernel) not in (2, 3):
            yield f"{len(kernel)}-D kernel; TensorRT takes 2-D or 3-D pooling only"
    if op in ("AveragePool", "MaxPool", "LpPool") and any(d != 1 for d in a.get("dilations", [])):
        yield f"dilations {list(a['dilations'])}; TensorRT pools with dilations of 1 only"
    if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
        yield "TensorRT does not support its Indices output"
    if op == "LayerNormalization" and any(node.output[1:]):
        yield "TensorRT supports only its first output Y (not Mean or InvStdDev)"
    if op == "Cast" and a.get("to") not in CAST_TO:
        yield f"casts to {TensorProto.DataType.Name(a.get('to', 0))}, a type TensorRT lacks"
    if op == "Constant" and {"sparse_value", "value_string", "value_strings"} & set(a):
        yield "TensorRT does not take sparse or string constants"
    if op == "Dropout" and len(node.input) > 2 and node.input[2] in values and \
            values[node.input[2]] is not None and values[node.input[2]].any():
        yield "training_mode is true; TensorRT runs Dropout for inference only"
    if op in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
        zero = values.get(node.input[2])
        if zero is None or zero.any():
            yield "the zero point is not a constant 0"
    if op == "Resize":
        for name, allowed in RESIZE.items():
            if name in a and a[name] not in allowed:
                yield f"{name} {a[name]!r}; TensorRT takes {', '.join(allowed)}"
        if a.get("antialias", 0):
            yield "antialiasing is not supported"
        scales = node.input[2] if len(node.input) > 2 else ""
        if scales and scales not in values and "axes" in a and \
                list(a["axes"]) != list(range(len(a["axes"]))):
            yield "tensor scales with axes other than all of the input's"
    if op == "ScatterND" and a.get("reduction", "none") != "none":
        yield f"reduction {a['reduction']!r}; TensorRT takes none only"
    if op == "TopK":
        k = values.get(node.input[1]) if len(node.input) > 1 else None
        if a.get("sorted", 1) != 1:
            yield "sorted=0 is not supported"
        if k is not None and k.size and k.max() >= 3840:
            yield f"K = {int(k.max())}; TensorRT takes K below 3840"
    if op == "LSTM" and (a.get("input_forget", 0) or a.get("layout", 0)):
        yield "input_forget and layout must be 0"
    if op in ("LSTM", "GRU", "RNN") and a.get("direction", "forward") == "bidirectional":
        acts = a.get("activations", [])
        if acts and acts[:len(acts) // 2] != acts[len(acts) // 2:]:
            yield "a bidirectional cell needs the same activations in both directions"


def _text(value):
    """An attribute value with bytes (ONNX strings) decoded."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value
