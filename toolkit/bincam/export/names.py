"""Renaming a tensor everywhere in an ONNX graph (its producer and every consumer)."""

from __future__ import annotations

import onnx


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Call tensor ``old`` ``new`` in every node of ``graph`` (not in control-flow bodies:
    bincam's graphs have none on the renamed paths)."""
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]
