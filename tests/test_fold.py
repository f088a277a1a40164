"""``fold_constants``: shape arithmetic a legacy export leaves in the graph folds for the fixed
input size, the batch axis stays symbolic, and the outputs do not change."""

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bincam.export.forward import fold_constants

SHAPE_ARITHMETIC = {"Div", "Mod", "Cast", "ConstantOfShape", "Range", "Equal", "Where"}


class ChannelShuffle(nn.Module):
    """Conv → ShuffleNet's channel shuffle written with ``x.size()`` → mean → Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = x.view(x.size(0), x.size(1) // 2, 2, x.size(2), x.size(3)).transpose(1, 2)
        x = x.reshape(x.size(0), -1, x.size(3), x.size(4))
        return self.head(x.mean((2, 3)))


class Windows(nn.Module):
    """Pad to a multiple of the window (``Mod``/``Sub`` on sizes), split into windows with the batch
    merged into axis 0, a mask built from the sizes (``ConstantOfShape``/``Range``/``Equal``/
    ``Where``), merge back → Linear."""

    def __init__(self, window=4):
        super().__init__()
        self.window = window
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6 * 9, 3)

    def forward(self, x):
        x = self.conv(x)
        b, c, h, w = x.shape
        s = self.window
        x = F.pad(x, (0, (s - w % s) % s, 0, (s - h % s) % s))
        hp, wp = x.shape[2], x.shape[3]
        rows = torch.arange(hp, device=x.device).view(-1, 1).expand(hp, wp)
        mask = torch.where(rows == hp - 1, torch.zeros(hp, wp), torch.ones(hp, wp))
        x = x * mask
        x = x.view(b, c, hp // s, s, wp // s, s).permute(0, 2, 4, 1, 3, 5)
        x = x.reshape(b * (hp // s) * (wp // s), c, s * s).mean(2)
        return self.head(x.reshape(b, -1))


def legacy_export(module, size):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.rand(2, 3, size, size),), buf, dynamo=False,
                          opset_version=18, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())


def dims(model):
    g = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    return {vi.name: [d.dim_value if d.HasField("dim_value") else d.dim_param or None
                      for d in vi.type.tensor_type.shape.dim]
            for vi in [*g.value_info, *g.output]}


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("module, size", [(ChannelShuffle(), 16), (Windows(), 10)],
                         ids=["channel-shuffle", "windows"])
def test_shape_arithmetic_folds(module, size):
    torch.manual_seed(0)
    raw = legacy_export(module, size)
    before = dims(raw)
    assert any(any(not isinstance(d, int) for d in shape[1:]) for shape in before.values())
    folded = fold_constants(raw)
    after = dims(folded)
    dynamic = {name: shape for name, shape in after.items()
               if any(not isinstance(d, int) for d in shape[1:])}
    assert dynamic == {}
    assert after["logits"][0] == "batch"
    assert SHAPE_ARITHMETIC.isdisjoint(n.op_type for n in folded.graph.node)
    onnx.checker.check_model(folded, full_check=True)
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        x = rng.random((batch, 3, size, size), dtype=np.float32)
        with torch.no_grad():
            reference = module(torch.from_numpy(x)).numpy()
        out = run(folded, x)
        assert out.shape == (batch, 3)
        assert np.abs(out - run(raw, x)).max() <= 1e-5
        assert np.abs(out - reference).max() <= 1e-5
