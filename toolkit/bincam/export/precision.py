"""Reduced-precision gradient graphs, the way TensorRT 10 (STRONGLY_TYPED) and 11 (strongly typed
only) take them: the precision is in the ONNX file's own types, not in a builder flag.

``fp16``: onnxconverter-common's ``convert_float_to_float16`` turns the graph's float tensors and
initializers into float16, with Cast nodes at the edges (``keep_io_types``: inputs and outputs stay
float32, so engines and the CAM epilogue see the same tensors as before). Kept in float32:

- ``Gemm`` and ``MatMul`` (the classifier head and its VJP): the logits decide the predicted class
  and the binary sign, and a 2048-term dot product is where float16 rounding would flip
  predictions; they are a negligible part of the work;
- the converter's default block list (ops without float16 kernels or with float16 range issues);
- constant outputs (the factored ``channel_weights [K,C]``, part of the head): the converter
  would store them in float16 (relative error 4.9e-4, small weights subnormal) and cast back;
  they are restored from the source file's float32 initializer.

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


HALF_OUTPUTS = ("activations", "gradients")  # the large outputs the fused kernel reads


def reduce_precision(model: onnx.ModelProto, precision: str,
                     half_outputs: bool = False) -> onnx.ModelProto:
    """The graph in ``precision`` (a new model; metadata carried over with ``bincam.precision``).
    ``half_outputs`` (fp16 only): ``activations`` and dense ``gradients`` stay float16 outputs
    instead of being cast back to float32, which halves the bytes an engine writes and the fused
    kernel reads (it takes binary16 inputs); logits and channel weights stay float32."""
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
    _keep_constant_outputs_float32(source, converted)
    if half_outputs:
        _outputs_half(converted, HALF_OUTPUTS)
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


def _constant_outputs(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Graph outputs that are an initializer behind Identity nodes: output name → initializer."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    found = {}
    for output in model.graph.output:
        name = output.name
        while name in producer and producer[name].op_type == "Identity":
            name = producer[name].input[0]
        if name in inits and inits[name].data_type == onnx.TensorProto.FLOAT:
            found[output.name] = inits[name]
    return found


def _keep_constant_outputs_float32(source: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    """Each constant float32 output of ``source`` written again from its float32 initializer
    (``<output>/float32``) in ``converted``; the converter's float16 copy and casts, now unused,
    are removed."""
    graph = converted.graph
    for output, tensor in _constant_outputs(source).items():
        kept = onnx.TensorProto()
        kept.CopyFrom(tensor)
        kept.name = f"{output}/float32"
        graph.initializer.append(kept)
        nodes = [n for n in graph.node if output not in n.output]
        nodes.append(onnx.helper.make_node("Identity", [kept.name], [output],
                                           name=f"{output}/float32"))
        del graph.node[:]
        graph.node.extend(nodes)
    while True:  # drop what nothing reads any more
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def _outputs_half(model: onnx.ModelProto, names) -> None:
    """Outputs in ``names`` written by the converter's float32 Cast of a float16 tensor read that
    tensor directly (an Identity) and are declared float16; the Casts are removed."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    for output in graph.output:
        cast = producer.get(output.name)
        if output.name not in names or cast is None or cast.op_type != "Cast":
            continue
        index = list(graph.node).index(cast)
        graph.node.remove(cast)
        graph.node.insert(index, onnx.helper.make_node("Identity", [cast.input[0]],
                                                       [output.name], name=f"{output.name}/half"))
        output.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16


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
