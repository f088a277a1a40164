"""Head kinds of a foreign classifier: its class logits ``z`` → the binary logits ``d`` that
bincam explains, appended to the graph before the gradients, so every consumer (σ(d), the sign
rule, modes, explaining files, analyze, serve) works on binary logits unchanged.

- ``sigmoid``: ``d = z`` (K independent binary decisions);
- ``softmax``, 2 classes: one decision, the positive class ``p`` against the other ``n``:
  ``d = z_p − z_n``, so ``σ(d) = softmax_p`` exactly; ``d = J·z`` with ``J = e_p − e_n`` is
  linear, so an affine head stays affine (factored weights ``J·W_eff``);
- ``softmax``, C > 2 classes (one-vs-rest ``d_c = z_c − logsumexp_{j≠c} z_j``): refused for
  now, with a clear error.

``--head auto`` reads the graph: a Softmax/LogSoftmax (softmax) or Sigmoid (sigmoid) reading the
logits tensor, or producing it (the model outputs probabilities: its input is tapped instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bincam.errors import BincamError

HEADS = ("auto", "sigmoid", "softmax")
SOFTMAX_OPS = ("Softmax", "LogSoftmax")
CLASS_LOGITS = "bincam/class_logits"


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
    """The binary decisions of a head: their names, the class names, the positive class and,
    for a linear head, ``J [K, C]`` with ``d = J·z`` (None: the one-vs-rest log-odds)."""
    attributes: list[str]
    classes: list[str] | None
    positive_class: int | None
    jacobian: np.ndarray | None


def decisions(kind: str, c: int, names: list[str] | None, positive: str | None) -> Decisions:
    """The decisions of a ``kind`` head over ``c`` class logits; ``names``: ``--attributes``
    (the C class names, or for 2 classes the one decision's name); ``positive``: the positive
    class of a 2-way softmax (index or class name; default 1)."""
    if kind == "sigmoid":
        if positive is not None:
            raise BincamError("--positive-class is for a 2-way softmax head (--head softmax)")
        names = names or [f"logit{i}" for i in range(c)]
        if len(names) != c:
            raise BincamError(f"the model has {c} logits but {len(names)} attribute names "
                              "were given")
        return Decisions(names, None, None, np.eye(c))
    if c < 2:
        raise BincamError(f"the logits have {c} value(s) per image: a softmax head needs ≥ 2 "
                          "classes; use --head sigmoid")
    if c > 2:
        raise BincamError(f"the logits have {c} classes: a softmax head over more than 2 "
                          "classes (one-vs-rest log-odds) is not supported yet; export a 2-way "
                          "softmax, or --head sigmoid to explain the raw class logits")
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
    return Decisions([classes[p]], list(classes), p, jacobian)


def append_head(graph: onnx.GraphProto, z: str, out: str, made: Decisions) -> None:
    """Nodes computing ``out`` = the binary logits ``d = J·z`` from the class logits ``z``."""
    graph.node.append(helper.make_node(  # a Constant node: shape inference gives it a shape
        "Constant", [], ["bincam/head_matrix"], name="bincam/head_matrix",
        value=numpy_helper.from_array(made.jacobian.T.astype(np.float32))))
    graph.node.append(helper.make_node("MatMul", [z, "bincam/head_matrix"], [out],
                                       name="bincam/head"))
