"""Candidate CAM tensors of an ONNX classifier, for ``bincam export --onnx M --list-activations``.

A Grad-CAM layer is the last spatial feature map before the head pools it away: here, the tensors
on a path to the logits that are ``[B, C, h, w]`` with ``h·w > 1`` (``--tokens none``), ViT tokens
``[B, P + h·w, C]`` with ``P`` prefix tokens (class, distillation, register; ``--tokens vit``)
or Swin tokens ``[B, h, w, C]`` feeding a LayerNorm (``--tokens swin``: torchvision's and timm's
channels-last layout), latest first; the input of a global pooling is marked as the usual choice.
"""

from __future__ import annotations

import onnx

POOLS = ("GlobalAveragePool", "ReduceMean", "GlobalMaxPool", "AveragePool")


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    return {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.output)}


def cam_candidates(model: onnx.ModelProto, logits: str, most: int = 8) -> list[dict]:
    """Up to ``most`` candidates ``{tensor, shape, tokens, note}``, the latest first."""
    from bincam.export.tokens import vit_prefix
    from bincam.export.vjp import path_nodes

    shapes = _shapes(model)
    pooled = {n.input[0] for n in model.graph.node if n.op_type in POOLS}
    normed = {n.input[0] for n in model.graph.node if n.op_type == "LayerNormalization"}  # swin
    source = model.graph.input[0].name
    found = []
    for node in reversed(path_nodes(model.graph, source, logits)):
        for name in node.output:
            dims = shapes.get(name, [])[1:]
            if len(dims) < 2 or not all(dims):
                continue
            tokens, note = None, ""
            if len(dims) == 3 and name in normed and dims[0] * dims[1] > 1:
                tokens = "swin"  # channels last, normalised per token
            elif len(dims) == 3 and dims[1] * dims[2] > 1:
                tokens, note = "none", "pooled next: the usual Grad-CAM layer" \
                    if name in pooled else ""
            elif len(dims) == 2 and vit_prefix(dims[0]) is not None:
                tokens = "vit"
                note = "a LayerNorm output: the last block's first is the usual ViT layer" \
                    if node.op_type == "LayerNormalization" else ""
            if tokens:
                found.append({"tensor": name, "shape": ["B", *dims], "tokens": tokens,
                              "note": note})
        if len(found) >= most:
            break
    return found[:most]
