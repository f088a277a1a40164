"""The VJP pass: append reverse-mode gradient nodes to an ONNX forward graph.

Given a graph that outputs ``logits [B, K_all]`` and an activation tensor ``A [B, C, h, w]``, the pass
walks the nodes between ``A`` and ``logits`` backwards and appends, per node, the nodes of its
vector–Jacobian product (one registered rule per op type, ``rules.py``). All K selected logits are
differentiated in one run: every cotangent carries a leading axis of K (``[K, *forward shape]``),
seeded with an identity matrix; saved forward tensors broadcast against it, and nothing of the
forward is recomputed. The new output ``gradients`` is ``[B, K, C, h, w]``.

An op on the path without a rule stops the pass with a message naming the op and the node.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from bincam.errors import BincamError
from bincam.export.opset import axes_as_input, check_appended, check_own_nodes, model_opset

GRADIENTS = "gradients"
# what a user can do when a node between the CAM tensor and the logits has no gradient rule
WAY_OUT = ("explain a tensor after that node instead (--activation; --list-activations "
           "lists them), or report the model to bincam")


class VjpBuilder:
    """Collects gradient nodes and constants; knows static shapes of the forward tensors."""

    def __init__(self, model: onnx.ModelProto, k: int):
        self.model = model
        self.graph = model.graph
        self.k = k
        self.opset = model_opset(model)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.consts = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        self.folded: dict[str, str | None] = {}  # folded tensor → its initializer, once made
        for node in self.graph.node:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        inferred = _infer_shapes(model)
        self.shapes: dict[str, list[int | None]] = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + \
                list(inferred.graph.output):
            dims = vi.type.tensor_type.shape.dim
            self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        for name, value in self.consts.items():
            self.shapes.setdefault(name, list(value.shape))
        self._count = 0
        self._kshape: dict[str, str] = {}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it does not depend on the graph's inputs: an initializer, a
        ``Constant``, or computed from those alone (NFNet's weight standardisation makes its
        convolution weights so), evaluated once by ONNX Runtime; else None."""
        if name in self.consts:
            return self.consts[name]
        producer = {o: n for n in self.graph.node for o in n.output}
        inputs = {i.name for i in self.graph.input} - set(self.consts)
        seen, stack, needed = {name}, [name], []
        while stack:
            tensor = stack.pop()
            if tensor in self.consts:
                continue
            node = producer.get(tensor)
            if node is None or tensor in inputs or node.op_type.startswith("Random"):
                return None  # a graph input (or a random draw) feeds it
            needed.append(node)
            for i in node.input:
                if i and i not in seen:
                    seen.add(i)
                    stack.append(i)
        import onnxruntime as ort

        order = {id(n): k for k, n in enumerate(self.graph.node)}
        nodes = sorted({id(n): n for n in needed}.values(), key=lambda n: order[id(n)])
        used = {i for n in nodes for i in n.input}
        inits = [numpy_helper.from_array(v, k) for k, v in self.consts.items() if k in used]
        graph = helper.make_graph(nodes, "fold", [], [helper.make_empty_tensor_value_info(name)],
                                  inits)
        part = helper.make_model(graph, opset_imports=self.model.opset_import,
                                 ir_version=self.model.ir_version)
        try:
            value = ort.InferenceSession(part.SerializeToString(), providers=[
                "CPUExecutionProvider"]).run([name], {})[0]
        except Exception:  # noqa: BLE001 - not foldable here: the rule refuses as before
            return None
        self.consts[name] = value
        self.folded[name] = None
        self.shapes.setdefault(name, list(value.shape))
        return value

    def constant_input(self, name: str) -> str:
        """``name`` where the graph holds it as a constant; for a folded value (``constant``) a
        new initializer with it, so the appended nodes read a build-time constant."""
        if name not in self.folded:
            return name
        if self.folded[name] is None:
            value = self.consts[name]
            self.folded[name] = self.const(value, "folded", value.dtype)
        return self.folded[name]

    def name(self, hint: str) -> str:
        self._count += 1
        return f"vjp/{hint}/{self._count}"

    def node(self, op: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def with_axes(self, op: str, inputs: list[str], axes: list[int], hint: str | None = None,
                  **attrs) -> str:
        """A Reduce*, Squeeze or Unsqueeze node over ``axes`` in the form the model's opset takes:
        axes as a constant input (from opset 13 for ReduceSum/Squeeze/Unsqueeze, 18 for the other
        Reduce*) or as an attribute (before)."""
        if axes_as_input(op, self.opset):
            return self.node(op, [*inputs, self.const(list(axes), "axes", np.int64)], hint, **attrs)
        return self.node(op, inputs, hint, axes=list(axes), **attrs)

    def reduce(self, op: str, x: str, axes: list[int], hint: str | None = None,
               keepdims: bool = True) -> str:
        """``op`` (ReduceSum, ReduceMean, ReduceMax …) of ``x`` over ``axes``."""
        return self.with_axes(op, [x], axes, hint, keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: list[int], hint: str = "unsq") -> str:
        return self.with_axes("Unsqueeze", [x], axes, hint)

    def const(self, value, hint: str = "c", dtype=np.float32) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def shape(self, tensor: str) -> list[int | None]:
        if tensor not in self.shapes:
            raise BincamError(f"no static shape for tensor {tensor!r}; run shape inference first")
        return self.shapes[tensor]

    def static(self, tensor: str) -> list[int]:
        """Shape without the batch axis, all static."""
        dims = self.shape(tensor)[1:]
        if any(d is None for d in dims):
            raise BincamError(f"tensor {tensor!r} has a dynamic non-batch dimension {dims}")
        return dims

    def k_shape(self, tensor: str) -> str:
        """A shape tensor ``[K, *shape(tensor)]`` (dynamic batch from the forward tensor)."""
        if tensor not in self._kshape:
            shp = self.node("Shape", [tensor], "shape")
            self._kshape[tensor] = self.node("Concat", [self.const([self.k], "K", np.int64), shp],
                                             "kshape", axis=0)
        return self._kshape[tensor]

    def as_4d(self, cot: str, like: str) -> str:
        """``[K, B, C, h, w]`` → ``[K·B, C, h, w]``."""
        return self.node("Reshape", [cot, self.const([-1, *self.static(like)], "shape4", np.int64)])

    def back_to(self, flat: str, like: str) -> str:
        """``[K·B, …]`` or any reshaped cotangent → ``[K, *shape(like)]``."""
        return self.node("Reshape", [flat, self.k_shape(like)])

    def unbroadcast(self, cot: str, target: str, result: str) -> str:
        """Sum a cotangent over the axes that broadcasting added to ``target`` (as ``result``)."""
        t, r = self.shape(target), self.shape(result)
        if t == r:
            return cot
        t_full = [1] * (len(r) - len(t)) + list(t)
        axes = [i + 1 for i, (a, b) in enumerate(zip(t_full, r)) if a == 1 and b != 1]
        summed = self.reduce("ReduceSum", cot, axes) if axes else cot
        return self.node("Reshape", [summed, self.k_shape(target)])


# ops whose output has their first input's type and shape, for where ONNX's inference lacks them
# (GroupNormalization-21 in onnx 1.23 infers nothing, leaving every tensor after it unknown)
SHAPE_PRESERVING = frozenset({"GroupNormalization"})


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference, with the outputs of ``SHAPE_PRESERVING`` ops it left unknown typed
    as their inputs (then inferred again)."""
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    known = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.input,
                                    *inferred.graph.output] if vi.type.tensor_type.HasField("shape")}
    missing = [(n.input[0], n.output[0]) for n in model.graph.node
               if n.op_type in SHAPE_PRESERVING and n.output[0] not in known and n.input[0] in known]
    if not missing:
        return inferred
    typed = onnx.ModelProto.FromString(model.SerializeToString())
    for source, target in missing:
        vi = typed.graph.value_info.add()
        vi.CopyFrom(known[source])
        vi.name = target
    return shape_inference.infer_shapes(typed, data_prop=True)


NO_GRADIENT = frozenset({"Shape", "Size"})


def path_nodes(graph: onnx.GraphProto, source: str, sink: str) -> list[onnx.NodeProto]:
    """Nodes on some path from tensor ``source`` to tensor ``sink``, in graph (topological) order."""
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    downstream, stack = {source}, [source]
    while stack:
        for node in consumers[stack.pop()]:
            if node.op_type in NO_GRADIENT:
                continue  # integer results (shapes, sizes): no gradient flows through them
            for out in node.output:
                if out not in downstream:
                    downstream.add(out)
                    stack.append(out)
    if sink not in downstream:
        raise BincamError(f"the logits tensor {sink!r} does not depend on {source!r}")
    producer = {out: node for node in graph.node for out in node.output}
    upstream, stack = {sink}, [sink]
    while stack:
        node = producer.get(stack.pop())
        if node is None:
            continue
        for name in node.input:
            if name in downstream and name not in upstream:
                upstream.add(name)
                stack.append(name)
    return [n for n in graph.node if any(o in upstream for o in n.output)
            and any(i in downstream for i in n.input)]


def append_gradients(model: onnx.ModelProto, activations: str, logits: str,
                     indices: list[int] | None = None, seed: str | None = None
                     ) -> onnx.ModelProto:
    """A copy of ``model`` with an extra output ``gradients [B, K, C, h, w]`` = ∂logits[:, k]/∂A.
    ``seed``: a forward tensor ``J [B, K_all, N]`` of the rows ``∂d_k/∂logits`` of outputs ``d``
    computed from ``logits [B, N]`` (a non-linear head, ``heads.one_vs_rest``): the gradients
    are then ``∂d_k/∂A = Σ_n J[:, k, n]·∂logits[:, n]/∂A``, the VJP seeded with ``J``'s rows."""
    from bincam.export.rules import RULES

    source = model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    b = VjpBuilder(model, k=0)
    k_all = b.shape(seed)[1] if seed else b.shape(logits)[1]
    indices = list(range(k_all)) if indices is None else list(indices)
    b.k = len(indices)
    nodes = path_nodes(model.graph, activations, logits)
    on_path = {activations} | {o for n in nodes for o in n.output}
    cot: dict[str, list[str]] = defaultdict(list)
    if seed:  # [B, K_all, N] → the selected rows, [K, B, N]
        rows = b.node("Gather", [seed, b.const(indices, "rows", np.int64)], "seed_rows", axis=1)
        cot[logits].append(b.node("Transpose", [rows], "seed", perm=[1, 0, 2]))
    else:
        eye = np.eye(k_all, dtype=np.float32)[indices][:, None, :]                  # [K, 1, K_all]
        cot[logits].append(b.node("Expand", [b.const(eye, "seed"), b.k_shape(logits)], "seed"))
    for node in reversed(nodes):
        rule = RULES.get(node.op_type)
        if rule is None:
            raise BincamError(f"no gradient rule for op {node.op_type} (node {node.name!r}) on the "
                              f"path from {activations!r} to {logits!r}; {WAY_OUT}")
        dys = {}
        for out in node.output:
            if cot.get(out):
                parts = cot[out]
                dys[out] = parts[0] if len(parts) == 1 else b.node("Sum", parts, "accumulate")
        if not dys:
            continue
        wanted = [i for i in node.input if i in on_path]
        try:
            grads = rule(b, node, dys, wanted)
        except BincamError as error:
            raise BincamError(f"{error}; {WAY_OUT}") from None
        for name, grad in grads.items():
            cot[name].append(grad)
    parts = cot[activations]
    grad = parts[0] if len(parts) == 1 else b.node("Sum", parts, "accumulate")
    rank = len(b.shape(activations))
    perm = [1, 0] + list(range(2, rank + 1))
    out = b.node("Transpose", [grad], "gradients", perm=perm)
    b.nodes.append(helper.make_node("Identity", [out], [GRADIENTS], name="vjp/output"))
    model.graph.node.extend(b.nodes)
    model.graph.initializer.extend(b.initializers)
    dims = b.shape(activations)
    shape = [dims[0] or "batch", b.k, *dims[1:]]
    model.graph.output.append(helper.make_tensor_value_info(GRADIENTS, TensorProto.FLOAT, shape))
    check_own_nodes(b.nodes, model)
    check_appended(source, model)
    return model
