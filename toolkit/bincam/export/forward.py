"""Forward export: a bincam net as an ONNX graph with outputs ``logits`` and ``activations``.

``activations`` is the CAM layer's tensor (any named tap, pre-ReLU ones included); the batch axis
is dynamic. The graph is what the VJP pass (``vjp.py``) extends with gradients.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from bincam.nets import cam_module

OPSET = 18
FILL_LIMIT = 8192  # elements of a ConstantOfShape folded here (onnxscript's input size limit)
INPUT, LOGITS, ACTIVATIONS = "images", "logits", "activations"


class _WithActivations(nn.Module):
    """Returns ``(logits, activations at layer)`` so the exporter keeps the tapped tensor."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        self.model = model
        self._captured: list[torch.Tensor] = []
        self.handle = cam_module(model, layer).register_forward_hook(
            lambda m, i, o: self._captured.append(o))

    def forward(self, x: torch.Tensor):
        self._captured.clear()
        logits = self.model(x)
        return logits, self._captured[-1]


def export_forward(model: nn.Module, layer: str | None = None, image_size: int | None = None,
                   opset: int = OPSET) -> onnx.ModelProto:
    """The ONNX forward graph of ``model`` (eval mode, float32) with dynamic batch."""
    layer = layer or model.default_cam_layer
    size = image_size or getattr(getattr(model, "card", None), "image_size", 224)
    param = next(model.parameters())
    was_training, dtype = model.training, param.dtype
    wrapper = _WithActivations(model.float(), layer).eval()
    x = torch.rand(2, 3, size, size, device=param.device)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (x,), buf, dynamo=False, opset_version=opset,
                              input_names=[INPUT], output_names=[LOGITS, ACTIVATIONS],
                              dynamic_axes={INPUT: {0: "batch"}, LOGITS: {0: "batch"},
                                            ACTIVATIONS: {0: "batch"}},
                              do_constant_folding=True)
    finally:
        wrapper.handle.remove()
        model.train(was_training).to(dtype)
    return fold_constants(onnx.load_from_string(buf.getvalue()))


def export_module(module: nn.Module, path, size: int, dynamo: bool = False) -> str:
    """Any torch classifier as ONNX (input ``x``, output ``logits``, dynamic batch) — what
    ``bincam export --onnx`` takes; for tests and benchmarks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.rand(2, 3, size, size),), str(path),
                          dynamo=dynamo, opset_version=OPSET, input_names=["x"],
                          output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return str(path)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants and shape arithmetic for the graph input's fixed size.

    Shape inference with data propagation gives each tensor's static dims. A ``Gather`` or
    ``Slice`` of ``Shape(x)`` that picks static dims only becomes a constant; any other ``Shape``
    node that reads a static dim becomes ``Concat(static dims, Gather(Shape(x), i) for each
    dynamic dim i)``; a ``ConstantOfShape`` of a constant shape becomes a constant; a ``Reshape``
    with a run-time target becomes one with a constant target (0 copies the batch, −1 infers it,
    see ``_reshape_target``). onnxscript's optimizer then folds what now has constant inputs
    (``Div``, ``Cast``, ``Range``, ``Equal``, ``Where``, …). Rounds repeat until no node changes:
    a reshape target, once constant, makes its output static, which frees the next ``Shape``.
    Dynamic dims (the batch) are still read at run time, so they stay symbolic."""
    import onnxscript.optimizer

    model = onnxscript.optimizer.optimize(model)
    for _ in range(len(model.graph.node)):  # a round rewrites ≥ 1 node; the bound is a guard
        if not _static_shapes(model):
            break
        model = onnxscript.optimizer.optimize(model)
    return model


def _known_dims(model: onnx.ModelProto, batch: int | None = None
                ) -> dict[str, list[int | str | None]]:
    """Tensor name → dims (an int, a symbol or ``None``), by ONNX shape inference with data
    propagation; with ``batch``, the graph inputs' dynamic dim 0 fixed to it for the run. Equal
    symbols are equal sizes (what inference proved); ``unk__*`` are unknown."""
    first = [vi.type.tensor_type.shape.dim[0] for vi in model.graph.input
             if batch and vi.type.tensor_type.shape.dim
             and not vi.type.tensor_type.shape.dim[0].HasField("dim_value")]
    saved = [onnx.TensorShapeProto.Dimension() for _ in first]
    for dim, keep in zip(first, saved):
        keep.CopyFrom(dim)
        dim.dim_value = batch
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - a graph ONNX cannot infer: fold nothing more
        return {}
    finally:
        for dim, keep in zip(first, saved):
            dim.CopyFrom(keep)
    g = inferred.graph
    return {vi.name: [d.dim_value if d.HasField("dim_value") else d.dim_param or None
                      for d in vi.type.tensor_type.shape.dim]
            for vi in [*g.value_info, *g.input, *g.output] if vi.type.tensor_type.HasField("shape")}


def _int_constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Integer initializers and ``Constant`` outputs of rank ≤ 1."""
    found = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return {k: v for k, v in found.items() if v.dtype.kind in "iu" and v.ndim <= 1}


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=name,
                            value=numpy_helper.from_array(value, name))


def _filled(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> np.ndarray | None:
    """The value of a ``ConstantOfShape`` of a constant shape (onnxscript leaves these), up to
    ``FILL_LIMIT`` elements."""
    shape = consts.get(node.input[0]) if node.op_type == "ConstantOfShape" else None
    if shape is None or np.prod(shape) > FILL_LIMIT:
        return None
    value = numpy_helper.to_array(node.attribute[0].t) if node.attribute else np.zeros(1, "f4")
    return np.full(shape, value.ravel()[0], dtype=value.dtype)


def _shape_range(node: onnx.NodeProto, rank: int) -> range:
    """The dims ``Shape`` (with its ``start``/``end``) reads."""
    a = {x.name: x.i for x in node.attribute}
    lo, hi = (max(0, min(rank, v + rank if v < 0 else v))
              for v in (a.get("start", 0), a.get("end", rank)))
    return range(lo, hi)


def _picked(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> np.ndarray | slice | None:
    """What a ``Gather`` or ``Slice`` with constant indices picks from a 1-D tensor (numpy
    indexing, ONNX and Python slices clamp alike); ``None`` for another node."""
    inputs = list(node.input) + [""] * 5
    if node.op_type == "Gather" and inputs[1] in consts:
        return consts[inputs[1]]
    if node.op_type == "Slice" and all(i in consts for i in inputs[1:3]) and \
            all(not i or i in consts for i in inputs[3:5]) and \
            (not inputs[3] or list(consts[inputs[3]]) in ([0], [-1])):
        step = consts[inputs[4]] if inputs[4] else [1]
        return slice(int(consts[inputs[1]][0]), int(consts[inputs[2]][0]), int(step[0]))
    return None


def _static_shapes(model: onnx.ModelProto) -> int:
    """Rewrite shape reads of static dims in place (see ``fold_constants``); the number of nodes
    rewritten."""
    graph = model.graph
    dims, consts = _known_dims(model), _int_constants(graph)
    ranges = {n.output[0]: _shape_range(n, len(dims[n.input[0]])) for n in graph.node
              if n.op_type == "Shape" and n.domain in ("", "ai.onnx") and n.input[0] in dims}
    shapes = {out: [dims[n.input[0]][i] for i in ranges[out]] for n in graph.node
              for out in n.output[:1] if out in ranges}
    probe = functools.cache(lambda batch: _known_dims(model, batch))
    nodes, changed = [], 0
    for node in graph.node:
        value = _filled(node, consts)
        picked = _picked(node, consts) if node.input and node.input[0] in shapes else None
        if picked is not None:
            read = np.asarray(np.array(shapes[node.input[0]], dtype=object)[picked], dtype=object)
            value = read.astype(np.int64) if all(
                isinstance(v, int) for v in read.ravel().tolist()) else None
        target = _reshape_target(node, dims, consts, probe)
        if value is not None:
            nodes.append(_constant(node.output[0], value))
        elif target is not None:
            nodes.append(_constant(f"{node.output[0]}/target", target))
            nodes.append(onnx.NodeProto())
            nodes[-1].CopyFrom(node)
            nodes[-1].input[1] = nodes[-2].output[0]
        else:
            nodes.append(node)
            continue
        changed += 1
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    out = []
    for node in nodes:
        read = shapes.get(node.output[0]) if node.op_type == "Shape" else None
        if read is None or not any(isinstance(v, int) for v in read) or _reads_dynamic_only(
                readers.get(node.output[0], []), read, consts):
            out.append(node)
            continue
        out.extend(_split_shape(node, read, ranges[node.output[0]].start))
        changed += 1
    del graph.node[:]
    graph.node.extend(out)
    return changed


def _reshape_target(node: onnx.NodeProto, dims, consts, probe) -> np.ndarray | None:
    """A constant target for a ``Reshape`` whose target is computed at run time: its output's
    static dims, 0 (copy) where the output has the input's symbol at the same axis, and −1 for at
    most one unknown dim. Unknown dims that are equal in ``probe(1)`` and ``probe(2)`` (dims with
    the batch fixed) are static: sizes are affine in the batch, ``d(B) = αB + β``, and
    ``d(1) = d(2)`` gives α = 0. ``None`` if the output is not pinned down, or if the −1 would
    only replace a symbol shape inference already has."""
    if node.op_type != "Reshape" or node.input[1] in consts or any(
            a.name == "allowzero" and a.i for a in node.attribute):
        return None
    x, y = dims.get(node.input[0]), dims.get(node.output[0])
    if x is None or y is None:
        return None
    copy = [i < len(x) and isinstance(d, str) and x[i] == d for i, d in enumerate(y)]
    known = y
    if sum(not c and not isinstance(d, int) for c, d in zip(copy, y)) > 1:
        one, two = probe(1).get(node.output[0]), probe(2).get(node.output[0])
        known = [one[i] if one and two and not isinstance(d, int) and one[i] == two[i] else d
                 for i, d in enumerate(y)]
    target = [0 if c else d if isinstance(d, int) else -1 for c, d in zip(copy, known)]
    if target.count(-1) > 1 or 0 in [d for c, d in zip(copy, known) if not c]:
        return None  # a static 0 would read as "copy"
    solvable = all(isinstance(d, int) for i, d in enumerate(x) if i >= len(y) or not copy[i])
    if -1 in target and isinstance(y[target.index(-1)], str) and not solvable and known == y:
        return None  # −1 would hide a symbol inference knows (the batch) and pin nothing
    return np.array(target, np.int64)


def _reads_dynamic_only(readers, read: list[int | None], consts) -> bool:
    """Every reader is a ``Gather`` of dynamic dims only (the form ``_split_shape`` emits)."""
    def dynamic(node):
        picked = _picked(node, consts) if node.op_type == "Gather" else None
        return picked is not None and not any(isinstance(read[int(i)], int)
                                              for i in np.ravel(picked))

    return bool(readers) and all(dynamic(r) for r in readers)


def _split_shape(node: onnx.NodeProto, read: list[int | None], first: int) -> list[onnx.NodeProto]:
    """``Shape(x)[first:first + len(read)]`` as ``Concat`` of constants (static dims) and
    ``Gather``s of the full ``Shape(x)`` (dynamic dims)."""
    base = node.output[0]  # tensor names are unique, node names need not be
    full = f"{base}/full"
    nodes, pieces, run = [helper.make_node("Shape", [node.input[0]], [full], name=full)], [], []
    for pos, dim in enumerate(read + [None]):  # None: flush the last run
        if isinstance(dim, int):
            run.append(dim)
            continue
        if run:
            pieces.append(f"{base}/dims{pos}")
            nodes.append(_constant(pieces[-1], np.array(run, np.int64)))
            run = []
        if pos < len(read):
            index, pieces = f"{base}/at{pos}", pieces + [f"{base}/dim{pos}"]
            nodes += [_constant(index, np.array([first + pos], np.int64)),
                      helper.make_node("Gather", [full, index], [pieces[-1]], name=pieces[-1])]
    return nodes + [helper.make_node("Concat", pieces, [node.output[0]], name=f"{base}/static",
                                     axis=0)]
