"""Head kinds of a foreign classifier: its class logits ``z`` → the binary logits ``d`` that
bincam explains, appended to the graph before the gradients, so every consumer (σ(d), the sign
rule, modes, explaining files, analyze, serve) works on binary logits unchanged.

- ``sigmoid``: ``d = z`` (K independent binary decisions);
- ``softmax``, 2 classes: one decision, the positive class ``p`` against the other ``n``:
  ``d = z_p − z_n``, so ``σ(d) = softmax_p`` exactly; ``d = J·z`` with ``J = e_p − e_n`` is
  linear, so an affine head stays affine (factored weights ``J·W_eff``);
- ``softmax``, C > 2 classes: one decision per class, one vs the rest,
  ``d_c = z_c − logsumexp_{j≠c} z_j``, so ``σ(d_c) = softmax_c`` exactly (``one_vs_rest``,
  computed stably). Not affine: dense gradients only, seeded with ``∂d/∂z`` computed in the
  forward pass (``∂d_c/∂z = e_c − softmax_{−c}``, the softmax over the other classes).

``--target logit`` (softmax heads): the maps explain the class logit ``z_c`` of each decision
(pytorch-grad-cam's ``ClassifierOutputTarget``; affine heads keep the factored form) while the
file's ``logits`` stay ``d``, so probabilities and predictions are still the model's softmax.

``--head auto`` reads the graph: a Softmax/LogSoftmax (softmax) or Sigmoid (sigmoid) reading the
logits tensor, or producing it (the model outputs probabilities: its input is tapped instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bincam.errors import BincamError
from bincam.export.opset import axes_as_input

HEADS = ("auto", "sigmoid", "softmax")
TARGETS = ("log-odds", "logit")
SOFTMAX_OPS = ("Softmax", "LogSoftmax")
# --target logit: the class logit z_c of each decision, the score the gradients are of (the
# file's ``logits`` stay the log-odds d); the self-checks differentiate it
TARGET_LOGITS = "bincam/target_logits"


@dataclass
class Head:
    kind: str                      # sigmoid | softmax
    logits: str                    # the class-logit tensor z in the source graph
    note: str                      # what was chosen and why, for the export's output line


def resolve_head(model: onnx.ModelProto, logits: str, head: str) -> Head:
    """The head kind and the class-logit tensor for ``--logits logits`` and ``--head head``."""
    if head not in HEADS:
        raise BincamError(f"--head must be one of {', '.join(HEADS)}, got {head!r}")
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(logits)
    tapped = ""
    if node is not None and node.op_type in SOFTMAX_OPS + ("Sigmoid",):
        found = "softmax" if node.op_type in SOFTMAX_OPS else "sigmoid"
        if head not in ("auto", found):
            raise BincamError(f"{logits!r} is the output of a {node.op_type}: a {head} head "
                              f"does not fit it; use --head {found} or auto")
        tapped = f"; {logits!r} is the {node.op_type} output (probabilities): tapped the " \
                 f"logits {node.input[0]!r} before it"
        return Head(found, node.input[0], f"head {found}{tapped}")
    readers = [n.op_type for n in model.graph.node if logits in n.input]
    seen = next((op for op in readers if op in SOFTMAX_OPS + ("Sigmoid",)), None)
    if head != "auto":
        return Head(head, logits, f"head {head} (declared)")
    if seen is None:
        return Head("sigmoid", logits, "head sigmoid (auto: no Softmax/Sigmoid reads the logits; "
                    "a softmax classifier needs --head softmax)")
    kind = "softmax" if seen in SOFTMAX_OPS else "sigmoid"
    return Head(kind, logits, f"head {kind} (auto: a {seen} reads the logits)")


@dataclass
class Decisions:
    """The binary decisions of a head: their names, the class names, the positive class,
    for a linear head ``J [K, C]`` with ``d = J·z`` (None: the one-vs-rest log-odds), and
    ``class_of``: the class logit ``z`` each decision's ``--target logit`` map explains."""
    attributes: list[str]
    classes: list[str] | None
    positive_class: int | None
    jacobian: np.ndarray | None
    class_of: list[int]


def decisions(kind: str, c: int, names: list[str] | None, positive: str | None,
              target: str = "log-odds") -> Decisions:
    """The decisions of a ``kind`` head over ``c`` class logits; ``names``: ``--attributes``
    (the C class names, or for 2 classes the one decision's name); ``positive``: the positive
    class of a 2-way softmax (index or class name; default 1); ``target``: what the maps
    explain, ``log-odds`` (``d``) or ``logit`` (the class logit ``z_c``, softmax only)."""
    if target not in TARGETS:
        raise BincamError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if kind == "sigmoid":
        if positive is not None:
            raise BincamError("--positive-class is for a 2-way softmax head (--head softmax)")
        if target != "log-odds":
            raise BincamError("--target logit is for a softmax head: a sigmoid head's logits "
                              "are already its binary log-odds (leave --target out)")
        names = names or [f"logit{i}" for i in range(c)]
        if len(names) != c:
            raise BincamError(f"the model has {c} logits but {len(names)} attribute names "
                              "were given")
        return Decisions(names, None, None, np.eye(c), list(range(c)))
    if c < 2:
        raise BincamError(f"the logits have {c} value(s) per image: a softmax head needs ≥ 2 "
                          "classes; use --head sigmoid")
    if c > 2:
        return _one_vs_rest(c, names, positive)
    given = names or ["class0", "class1"]
    if len(given) not in (1, 2):
        raise BincamError(f"the 2-way softmax makes 1 binary decision but {len(given)} "
                          "attribute names were given; give the 2 class names (or the one "
                          "decision's name)")
    p = 1
    if positive is not None:
        classes = given if len(given) == 2 else ["class0", "class1"]
        p = classes.index(positive) if positive in classes else \
            int(positive) if positive.lstrip("-").isdigit() else -1
        if p not in (0, 1):
            raise BincamError(f"--positive-class {positive!r} is not 0, 1 or a class name "
                              f"({', '.join(classes)})")
    classes = given if len(given) == 2 else \
        [f"not {given[0]}", given[0]] if p == 1 else [given[0], f"not {given[0]}"]
    jacobian = np.zeros((1, 2))
    jacobian[0, p], jacobian[0, 1 - p] = 1.0, -1.0
    return Decisions([classes[p]], list(classes), p, jacobian, [p])


def _one_vs_rest(c: int, names: list[str] | None, positive: str | None) -> Decisions:
    """A C-way softmax (C > 2): one decision per class, named after it."""
    if positive is not None:
        raise BincamError(f"--positive-class is for a 2-way softmax head; a {c}-way softmax "
                          "makes one decision per class (pick some with --explain-attributes)")
    names = names or [f"class{i}" for i in range(c)]
    if len(names) != c:
        raise BincamError(f"the {c}-way softmax makes one decision per class but {len(names)} "
                          f"class names were given; give all {c} in --attributes")
    if len(set(names)) != c:
        raise BincamError("--attributes: the class names must be distinct")
    return Decisions(list(names), list(names), None, None, list(range(c)))


def append_head(graph: onnx.GraphProto, z: str, out: str, made: Decisions,
                opset: int) -> str | None:
    """Nodes computing ``out`` = the binary logits ``d`` from the class logits ``z [B, C]``:
    ``d = J·z`` for a linear head (returns None), else the one-vs-rest log-odds (returns the
    tensor ``∂d/∂z [B, C, C]`` that seeds the gradients, see ``one_vs_rest``)."""
    if made.jacobian is None:
        return one_vs_rest(graph, z, out, len(made.classes), opset)
    graph.node.append(helper.make_node(  # a Constant node: shape inference gives it a shape
        "Constant", [], ["bincam/head_matrix"], name="bincam/head_matrix",
        value=numpy_helper.from_array(made.jacobian.T.astype(np.float32))))
    graph.node.append(helper.make_node("MatMul", [z, "bincam/head_matrix"], [out],
                                       name="bincam/head"))
    return None


def one_vs_rest(graph: onnx.GraphProto, z: str, out: str, c: int, opset: int) -> str:
    """``out [B, C]``: ``d_c = z_c − logsumexp_{j≠c} z_j``, computed stably as
    ``d_c = (z_c − m_c) − log s_c`` with ``m_c = max_{j≠c} z_j`` and
    ``s_c = Σ_{j≠c} exp(z_j − m_c) ≥ 1`` (no overflow, no log of 0, on any runtime; the
    differences are taken before the large values meet). Returns ``bincam/head_jacobian
    [B, C, C]``, ``∂d_c/∂z_j = δ_cj − [j≠c]·exp((z_j − m_c) − log s_c)`` (the softmax over the
    other classes, ≤ 1 off the diagonal), computed in the forward pass: the gradients are
    seeded with it (``vjp.append_gradients``) instead of differentiating these nodes."""
    nodes = []

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [f"bincam/{name}"], name=f"bincam/{name}",
                                      **attrs))
        return f"bincam/{name}"

    def const(name: str, value: np.ndarray) -> str:
        return node("Constant", [], name, value=numpy_helper.from_array(value))

    def reduce(op: str, x: str, name: str) -> str:  # over the last axis (2), kept
        if axes_as_input(op, opset):
            return node(op, [x, const(f"{name}_axes", np.array([2], np.int64))], name,
                        keepdims=1)
        return node(op, [x], name, axes=[2], keepdims=1)

    others = np.array([j for k in range(c) for j in range(c) if j != k], np.int64)
    picked = node("Gather", [z, const("head_others", others)], "head_picked", axis=1)
    rest = node("Reshape", [picked, const("head_rest_shape", np.array([-1, c, c - 1],
                                                                      np.int64))], "head_rest")
    peak = reduce("ReduceMax", rest, "head_rest_max")                         # m_c [B, C, 1]
    total = reduce("ReduceSum", node("Exp", [node("Sub", [rest, peak], "head_shifted")],
                                     "head_exp"), "head_sum")                 # s_c [B, C, 1]
    log = node("Log", [total], "head_log")
    flat = const("head_flat_shape", np.array([-1, c], np.int64))
    above = node("Sub", [z, node("Reshape", [peak, flat], "head_peak")], "head_above")
    nodes.append(helper.make_node("Sub", [above, node("Reshape", [log, flat], "head_log_flat")],
                                  [out], name="bincam/head"))
    row = node("Unsqueeze", [z, const("head_row_axes", np.array([1], np.int64))],
               "head_row")                                                    # [B, 1, C]
    gap = node("Sub", [node("Sub", [row, peak], "head_row_above"), log], "head_gap")
    diagonal = const("head_diagonal", np.eye(c, dtype=bool))
    gap = node("Where", [diagonal, const("head_zero", np.zeros((), np.float32)), gap],
               "head_gap_off")                                # z_j − L_c, 0 on the diagonal
    weight = node("Exp", [gap], "head_other_softmax")
    node("Where", [diagonal, const("head_one", np.ones((), np.float32)),
                   node("Neg", [weight], "head_minus")], "head_jacobian")
    graph.node.extend(nodes)
    return "bincam/head_jacobian"
