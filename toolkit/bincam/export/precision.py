"""Reduced-precision gradient graphs, the way TensorRT 10 (STRONGLY_TYPED) and 11 (strongly typed
only) take them: the precision is in the ONNX file's own types, not in a builder flag.

``fp16``: onnxconverter-common's ``convert_float_to_float16`` turns the graph's float tensors and
initializers into float16, with Cast nodes at the edges (``keep_io_types``: inputs and outputs stay
float32, so engines and the CAM epilogue see the same tensors as before). Kept in float32:

- ``Gemm`` and ``MatMul`` (the classifier head and its VJP): the logits decide the predicted class
  and the binary sign, and a 2048-term dot product is where float16 rounding would flip
  predictions; they are a negligible part of the work;
- the converter's default block list (ops without float16 kernels or with float16 range issues).

Everything else — the convolutions, their ConvTranspose VJPs, ReLU masks, additions, pooling — runs
in float16. ONNX Runtime runs the same file on the CPU, so its fidelity is measured before any GPU
sees it. ``bf16`` would need ModelOpt AutoCast (not a bincam dependency) and is refused.
"""

from __future__ import annotations

import warnings

import onnx

from bincam.core.model_info import onnx_info, write_metadata
from bincam.errors import BincamError
from bincam.export.names import rename_tensor

PRECISIONS = ("fp32", "fp16")
KEEP_FP32_OPS = ("Gemm", "MatMul")


def reduce_precision(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """The graph in ``precision`` (a new model; metadata carried over with ``bincam.precision``)."""
    if precision == "fp32":
        return model
    if precision == "bf16":
        raise BincamError("bf16 graphs need NVIDIA ModelOpt AutoCast, which bincam does not "
                          "depend on; use --precision fp16")
    if precision not in PRECISIONS:
        raise BincamError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise BincamError("fp16 export needs onnxconverter-common: pip install "
                          "'bincam[fp16]'") from None
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(KEEP_FP32_OPS))
    source = _detach_outputs(model)
    del source.graph.value_info[:]  # stale float32 annotations would contradict the new types
    with warnings.catch_warnings():  # weights below float16's smallest subnormal get clipped
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(source, keep_io_types=True,
                                                      op_block_list=block)
    del converted.graph.value_info[:]
    info = onnx_info(model, "the model")
    info.precision = precision
    write_metadata(converted, info)
    return converted


def _detach_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every graph output is written by an Identity of an internal tensor, so that
    nodes reading e.g. ``activations`` inside the graph read the float16 tensor, and the
    converter's float32 Cast sits only at the output."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for output in out.graph.output:
        internal = f"{output.name}/internal"
        rename_tensor(out.graph, output.name, internal)
        out.graph.node.append(onnx.helper.make_node("Identity", [internal], [output.name],
                                                    name=f"{output.name}/output"))
    return out


def op_types_by_precision(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Op types whose outputs are float16 and those computing in float32 (for the export report)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    dtype = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.output)}
    dtype.update({t.name: t.data_type for t in inferred.graph.initializer})
    half, single = set(), set()
    for node in inferred.graph.node:
        if node.op_type == "Cast":
            continue
        kinds = {dtype.get(o) for o in node.output}
        if onnx.TensorProto.FLOAT16 in kinds:
            half.add(node.op_type)
        elif onnx.TensorProto.FLOAT in kinds:
            single.add(node.op_type)
    return {"float16": sorted(half), "float32": sorted(single - half)}
