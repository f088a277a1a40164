"""The exported file's input: its size and layout checked against the declared preprocessing,
and ``--raw-pixels`` (uint8 ``[N, S, S, 3]`` RGB normalised inside the graph).

The raw-pixels prefix computes, in float32 and in ops every opset since 7 has
(``Cast``, ``Gather``, ``Transpose``, ``Mul``, ``Add``, ``Sub``, ``Div``):

    x = ((Cast(u)·(hi − lo)/255 + lo)[order] − mean) / std,  transposed to NCHW where needed

which is ``core.preprocess.model_input`` for uint8 pixels, so ``OrtEngine``/``TrtEngine`` feed
the pixels themselves and Triton clients and browsers send what they decoded.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bincam.core.model_info import onnx_info, write_metadata
from bincam.core.preprocess import Preprocessing, preprocessing_of
from bincam.errors import BincamError

RAW_INPUT = "pixels"


def _dims(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value.type.tensor_type.shape.dim]


def image_input(model: onnx.ModelProto, prep: Preprocessing, size: int | None,
                source: str, size_hint: int | None = None) -> int | None:
    """Check that the graph's input is a batch of 3-channel images as ``prep.layout`` says and
    fix its spatial dims to ``size`` (``--size``) where they are dynamic; its side (``None``
    where it stays unknown). One clear error where layout, channels or size disagree.
    ``size_hint`` (a ``--preprocess`` source's size) fixes dynamic sides only."""
    inputs = [i for i in model.graph.input
              if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise BincamError(f"{source} has {len(inputs)} inputs; bincam explains models with one "
                          "image input")
    value = inputs[0]
    dims = _dims(value)
    nhwc = prep.layout == "nhwc"
    elem = value.type.tensor_type.elem_type
    channels = dims[3 if nhwc else 1] if len(dims) == 4 else None
    if not value.type.tensor_type.HasField("shape") and not prep.raw_pixels:
        return size  # no declared shape: what it takes shows when it runs
    if len(dims) != 4 or elem != TensorProto.FLOAT or channels not in (3, None):
        what = (f"{TensorProto.DataType.Name(elem).lower()} {dims}" if dims else "of unknown shape")
        hint = ("; it looks NHWC: give --layout nhwc" if len(dims) == 4 and not nhwc and
                dims[3] == 3 else "; it looks NCHW: give --layout nchw" if len(dims) == 4 and
                nhwc and dims[1] == 3 else "")
        raise BincamError(f"the input {value.name!r} of {source} is {what}, not a float batch of "
                          f"3-channel images [N, {'H, W, 3' if nhwc else '3, H, W'}] "
                          f"({prep.layout.upper()}){hint}; "
                          + ("--raw-pixels needs an image input" if prep.raw_pixels else
                             "bincam explains image classifiers"))
    batch = value.type.tensor_type.shape.dim[0]
    if batch.HasField("dim_value") and batch.dim_value:
        raise BincamError(f"the input {value.name!r} of {source} has a fixed batch size "
                          f"{batch.dim_value}; bincam runs batches of images: export the model "
                          f"with a dynamic batch axis (torch.onnx.export(..., dynamic_axes="
                          f"{{{value.name!r}: {{0: 'batch'}}}}), or dynamic_shapes)")
    spatial = [1, 2] if nhwc else [2, 3]
    for i in spatial:
        dim = value.type.tensor_type.shape.dim[i]
        if dim.HasField("dim_value") and dim.dim_value:
            if size is not None and dim.dim_value != size:
                raise BincamError(f"--size {size}: the input {value.name!r} of {source} is "
                                  f"fixed at {dims[spatial[0]]}×{dims[spatial[1]]}")
        elif (size or size_hint) is not None:
            dim.dim_value = size or size_hint  # a dynamic side fixed (a oneof: no dim_param)
    sides = [d if isinstance(d, int) and d else None for d in (_dims(value)[i] for i in spatial)]
    if sides[0] and sides[1] and sides[0] != sides[1]:
        raise BincamError(f"the input {value.name!r} of {source} is {sides[0]}×{sides[1]}; "
                          "bincam's frame is square (H = W)")
    return sides[0] if sides[0] and sides[0] == sides[1] else None


def raw_pixel_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` fed uint8 ``[N, S, S, 3]`` RGB pixels (input ``pixels``), normalised in the graph
    by the preprocessing its metadata records; metadata updated (``bincam.raw_pixels``)."""
    info = onnx_info(model, "the exported model")
    prep = preprocessing_of(info)
    if prep.raw_pixels:
        return model
    size = info.image_size
    if not size:
        raise BincamError("--raw-pixels needs a static input size; give --size")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    old = next(i for i in g.input if i.name == info.input_name)
    names = {o for n in g.node for o in n.output} | {i.name for i in g.input} | \
        {t.name for t in g.initializer}
    if RAW_INPUT in names:
        raise BincamError(f"the model already has a tensor called {RAW_INPUT!r}; rename it "
                          "before --raw-pixels")
    batch = old.type.tensor_type.shape.dim[0]
    pixels = helper.make_tensor_value_info(RAW_INPUT, TensorProto.UINT8,
                                           [batch.dim_value or batch.dim_param or "N",
                                            size, size, 3])
    nhwc = prep.layout == "nhwc"
    lo, hi = prep.pixel_range
    shape = [3] if nhwc else [1, 3, 1, 1]
    consts = {"bincam/pixels/scale": np.float32((hi - lo) / 255.0),
              "bincam/pixels/offset": np.float32(lo),
              "bincam/pixels/mean": np.asarray(prep.mean, np.float32).reshape(shape),
              "bincam/pixels/std": np.asarray(prep.std, np.float32).reshape(shape),
              "bincam/pixels/bgr": np.asarray([2, 1, 0], np.int64)}
    nodes, x = [helper.make_node("Cast", [RAW_INPUT], ["bincam/pixels/float"],
                                 to=TensorProto.FLOAT, name="bincam/pixels/cast")], \
        "bincam/pixels/float"

    def step(op: str, *inputs: str, **attrs) -> None:
        nonlocal x
        name = f"bincam/pixels/{op.lower()}{len(nodes)}"
        nodes.append(helper.make_node(op, [x, *inputs], [name], name=name, **attrs))
        x = name

    step("Mul", "bincam/pixels/scale")
    if lo:
        step("Add", "bincam/pixels/offset")
    if prep.channel_order == "bgr":
        step("Gather", "bincam/pixels/bgr", axis=3)
    if not nhwc:
        step("Transpose", perm=[0, 3, 1, 2])
    step("Sub", "bincam/pixels/mean")
    step("Div", "bincam/pixels/std")
    nodes[-1].output[0] = info.input_name
    used = {i for n in nodes for i in n.input}
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items() if k in used)
    kept = [i for i in g.input if i.name != info.input_name]
    del g.input[:]
    g.input.extend([pixels, *kept])
    body = list(g.node)
    del g.node[:]
    g.node.extend(nodes + body)
    info.raw_pixels, info.input_name = True, RAW_INPUT
    write_metadata(out, info)
    onnx.checker.check_model(out)
    return out


def raw_pixel_parity(raw: onnx.ModelProto, reference: onnx.ModelProto, seed: int = 0) -> float:
    """Largest relative difference of the logits of the raw-pixels file fed uint8 pixels and the
    float file fed ``core.preprocess.model_input`` of the same pixels (ONNX Runtime)."""
    import onnxruntime as ort

    info = onnx_info(reference, "the exported model")
    size = info.image_size
    pixels = np.random.default_rng(seed).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    pixels[1] = np.array([0, 255, 128], np.uint8)  # extremes and a flat image
    from bincam.core.preprocess import pixels_input

    def logits(model, name, x):
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        return session.run(["logits"], {name: x})[0].astype(np.float64)

    ours = logits(raw, RAW_INPUT, pixels)
    theirs = logits(reference, info.input_name, pixels_input(pixels, preprocessing_of(info)))
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-12))
