"""TensorRT operator lint: the ops of an ONNX graph and the constraints the onnx-tensorrt operator
matrix states for them (``docs/operators.md`` of onnx/onnx-tensorrt), checked without TensorRT."""

from __future__ import annotations

import onnx
from onnx import helper

# op -> restriction checked here (None: supported without a restriction that applies to us)
SUPPORTED = {
    "Add": None, "Sub": None, "Mul": None, "Div": None, "Neg": None, "Sum": None, "Relu": None,
    "Sigmoid": None, "Identity": None, "Flatten": None, "Reshape": None, "Squeeze": None,
    "Unsqueeze": None, "Transpose": None, "Concat": None, "Slice": None, "Expand": None,
    "Shape": None, "Where": None, "Greater": None, "Equal": None, "Gemm": None, "MatMul": None,
    "GlobalAveragePool": None, "ReduceMean": None, "ReduceSum": None, "BatchNormalization": None,
    "Constant": None, "ConstantOfShape": None, "Cast": None, "Pad": None, "Resize": None,
    "Conv": "2D or 3D convolutions only",
    "ConvTranspose": "2D or 3D deconvolutions only; weights must be an initializer",
    "AveragePool": "2D or 3D pooling only", "MaxPool": "2D or 3D pooling only",
    "Clip": "min and max must be initializers",
}


def lint_tensorrt(model: onnx.ModelProto) -> list[str]:
    """Problems TensorRT's ONNX parser would have with ``model`` (empty list: none found)."""
    problems = []
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        where = f"{node.op_type} node {node.name!r}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r}")
            continue
        if node.op_type not in SUPPORTED:
            problems.append(f"{where}: op not in the TensorRT ONNX operator list")
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("Conv", "ConvTranspose", "AveragePool", "MaxPool"):
            kernel = attrs.get("kernel_shape")
            if kernel is not None and len(kernel) not in (2, 3):
                problems.append(f"{where}: {len(kernel)}-D kernel ({SUPPORTED[node.op_type]})")
        if node.op_type == "ConvTranspose" and node.input[1] not in inits:
            problems.append(f"{where}: weights are not an initializer")
        if node.op_type == "Clip" and any(i and i not in inits for i in node.input[1:]):
            problems.append(f"{where}: {SUPPORTED['Clip']}")
    return problems
