"""Slice, Concat and Gather gradients along a token axis whose extent is known at run time only,
as PiT exports them (``x[:, :n_tokens]`` with ``n_tokens`` computed from a shape, the class token
concatenated back, then the class-token ``Gather``): a valid graph at every opset 13–21, equal to
float64 autograd at two token counts."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bincam.export.lint import SUPPORTED, lint_tensorrt
from bincam.export.opset import OPSETS, axes_as_input
from bincam.export.vjp import GRADIENTS, append_gradients

K, C = 3, 5
N = helper.make_node
INDICES = {"class-token": np.array(0, np.int64),
           "rank2-negative-repeated": np.array([[0, -1], [1, 1]], np.int64)}


def pit_like(opset: int, indices: np.ndarray, head: np.ndarray) -> onnx.ModelProto:
    """``x [B, n, C] → s = x[:, 1:n − 2] → cat(x[:, :1], s, s) → take(·, indices, axis 1) →
    flatten → ·head``, ``n`` dynamic; the slice's end computed from ``Shape(x)`` as the exporter
    writes it."""
    unsqueeze = (N("Unsqueeze", ["e", "zero_axis"], ["e1"]) if axes_as_input("Unsqueeze", opset)
                 else N("Unsqueeze", ["e"], ["e1"], axes=[0]))
    nodes = [N("Shape", ["x"], ["sh"]), N("Gather", ["sh", "one"], ["n"], axis=0),
             N("Sub", ["n", "two"], ["e"]), unsqueeze,
             N("Slice", ["x", "start", "e1", "axis1"], ["s"]),
             N("Slice", ["x", "zero_axis", "start", "axis1"], ["cls"]),
             N("Concat", ["cls", "s", "s"], ["c"], axis=1),
             N("Gather", ["c", "idx"], ["g"], axis=1), N("Flatten", ["g"], ["f"], axis=1),
             N("MatMul", ["f", "head"], ["logits"])]
    consts = {"one": np.array(1, np.int64), "two": np.array(2, np.int64),
              "zero_axis": np.array([0], np.int64), "start": np.array([1], np.int64),
              "axis1": np.array([1], np.int64), "idx": indices, "head": head}
    graph = helper.make_graph(
        nodes, "pit_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                          ["batch", "tokens", C])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", K])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=min(onnx.IR_VERSION, 10))


@pytest.mark.parametrize("opset", list(OPSETS))
@pytest.mark.parametrize("which", list(INDICES))
def test_dynamic_token_axis_gradients(which, opset):
    indices = INDICES[which]
    head = np.random.default_rng(opset).normal(size=(max(indices.size, 1) * C, K))
    model = pit_like(opset, indices, head.astype(np.float32))
    extended = append_gradients(model, "x", "logits")
    onnx.checker.check_model(extended, full_check=True)
    new_nodes = extended.graph.node[len(model.graph.node):]
    assert {n.op_type for n in new_nodes} <= set(SUPPORTED)
    assert [p for p in lint_tensorrt(extended) if any(f"'{n.name}'" in p for n in new_nodes)] == []
    sess = ort.InferenceSession(extended.SerializeToString(), providers=["CPUExecutionProvider"])
    for tokens in (7, 10):
        x = torch.randn(2, tokens, C, dtype=torch.float64, requires_grad=True)
        s = x[:, 1:tokens - 2]
        c = torch.cat([x[:, :1], s, s], 1)
        z = c[:, torch.from_numpy(indices)].flatten(1) @ torch.from_numpy(head)
        expected = torch.stack([torch.autograd.grad(z[:, k].sum(), x, retain_graph=True)[0]
                                for k in range(K)], 1).numpy()
        got = sess.run([GRADIENTS], {"x": x.detach().float().numpy()})[0]
        assert got.shape == expected.shape
        err = np.linalg.norm(got - expected) / np.linalg.norm(expected)
        assert err <= 1e-5, f"{which} at opset {opset}, {tokens} tokens: relative L2 {err:.2e}"
