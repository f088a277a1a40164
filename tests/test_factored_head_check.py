"""The factored-head self-check and the affine-head rule on the structures that timm's
regnetz_005 and repvgg_a0 have (issue 27): a head that is affine is accepted, factored and equal
to float64 autograd, even when the net's features barely depend on its input; a head that is not
affine is left to the dense gradients."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from bincam.export.checks import run_checks
from bincam.export.forward import export_module
from bincam.export.model import export_onnx_classifier
from bincam.runtime import open_engine


class _Collapsed(nn.Module):
    """conv → ReLU (the tap) → global pool → Linear with a large bias; the conv's weights are
    tiny, so ``z`` differs between two images by ~1e-7 of itself (random weights with poor
    BatchNorm statistics make repvgg_a0 and regnetz_005 do the same)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            self.conv.weight.mul_(1e-6)
            self.conv.bias.uniform_(0.5, 1.0)
            self.fc.bias.fill_(20.0)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class _RegNetZTail(nn.Module):
    """regnetz's tail: last stage's output → 1×1 conv → BatchNorm → SiLU (final_conv) → pool →
    Linear. At the stage's output the head is not affine; at the SiLU's output it is."""

    def __init__(self):
        super().__init__()
        self.stage = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.final_conv = nn.Sequential(nn.Conv2d(6, 10, 1), nn.BatchNorm2d(10), nn.SiLU())
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        return self.fc(self.final_conv(self.stage(x)).mean((2, 3)))


def _checks(model) -> dict:
    return {c.name: c for c in run_checks(model)}


def _layout(model) -> str:
    return {p.key: p.value for p in model.metadata_props}["bincam.gradient_layout"]


def _reference(net, x: np.ndarray, site, a: np.ndarray) -> np.ndarray:
    """``∂z_k/∂A [B, K, *A]`` by float64 autograd, ``A`` (a leaf) replacing ``site``'s output."""
    net64 = __import__("copy").deepcopy(net).double().eval()
    leaf = torch.from_numpy(a).double().requires_grad_(True)
    handle = site(net64).register_forward_hook(lambda *_: leaf)
    try:
        z = net64(torch.from_numpy(x).double())
    finally:
        handle.remove()
    return torch.stack([torch.autograd.grad(z[:, k].sum(), leaf, retain_graph=True)[0]
                        for k in range(z.shape[1])], 1).numpy()


def _engine_gradients(model, x: np.ndarray):
    with open_engine(model.SerializeToString(), "ort") as engine:
        out = engine.run(x)
        a = out["activations"]
        if "gradients" in out:
            return a, out["gradients"].astype(np.float64)
        mask = (a > 0) if engine.info.mask_positive else np.ones_like(a, bool)
        w = out["channel_weights"].astype(np.float64)
        return a, w[None, :, :, None, None] * mask[:, None]


def _rel(g, ref) -> float:
    return float(np.linalg.norm(g - ref) / np.linalg.norm(ref))


def test_an_affine_head_of_an_input_insensitive_net_is_accepted(tmp_path):
    """The old check compared Δz between two images: here Δz is the float32 rounding of z and
    the check failed (error ~1) though the head is affine. Now accepted and exact."""
    torch.manual_seed(0)
    net = _Collapsed().eval()
    path = export_module(net, tmp_path / "collapsed.onnx", 16)
    tap = [n.output[0] for n in onnx.load(path).graph.node if n.op_type == "Relu"][0]
    model = export_onnx_classifier(path, tap, "logits")
    assert _layout(model) == "factored"
    checks = _checks(model)
    assert checks["self-check: factored head"].ok, checks["self-check: factored head"].detail
    assert all(c.ok for c in checks.values()), {n: c.detail for n, c in checks.items()}
    x = np.random.default_rng(3).random((2, 3, 16, 16), dtype=np.float32)
    a, g = _engine_gradients(model, x)
    assert _rel(g, _reference(net, x, lambda m: m.conv, a)) < 1e-6  # ReLU after the tap: masked


def test_a_wrong_channel_weight_fails_the_factored_head_check(tmp_path):
    torch.manual_seed(1)
    net = _RegNetZTail().eval()
    path = export_module(net, tmp_path / "tail.onnx", 12)
    tap = [n.output[0] for n in onnx.load(path).graph.node if n.op_type == "Mul"][-1]
    model = export_onnx_classifier(path, tap, "logits")
    assert _layout(model) == "factored"
    weights = next(t for t in model.graph.initializer if t.name == "bincam/channel_weights")
    wrong = onnx.numpy_helper.to_array(weights).copy()
    wrong[2, 3] *= 1.01
    weights.CopyFrom(onnx.numpy_helper.from_array(wrong, weights.name))
    assert not _checks(model)["self-check: factored head"].ok


@pytest.mark.parametrize("where", ["stage output (head: conv, BN, SiLU)", "final_conv output"])
def test_regnetz_like_tail(tmp_path, where):
    """At the stage's output the head holds a 1×1 conv, a BatchNorm and a SiLU: not affine, so
    ``--gradients auto`` gives the dense gradients; at the SiLU's output it is affine."""
    torch.manual_seed(2)
    net = _RegNetZTail()
    net.train()
    with torch.no_grad():
        net(torch.rand(4, 3, 12, 12))
    net.eval()
    path = export_module(net, tmp_path / "tail.onnx", 12)
    nodes = onnx.load(path).graph.node
    first = where.startswith("stage")
    tap = [n.output[0] for n in nodes if n.op_type == "Relu"][0] if first else \
        [n.output[0] for n in nodes if n.op_type == "Mul"][-1]
    model = export_onnx_classifier(path, tap, "logits")
    assert _layout(model) == ("dense" if first else "factored")
    checks = _checks(model)
    assert all(c.ok for c in checks.values()), {n: c.detail for n, c in checks.items()}
    x = np.random.default_rng(4).random((2, 3, 12, 12), dtype=np.float32)
    a, g = _engine_gradients(model, x)
    site = (lambda m: m.stage) if first else (lambda m: m.final_conv)
    assert _rel(g, _reference(net, x, site, a)) < 1e-5


@pytest.mark.parametrize("name", ["repvgg_a0", "regnetz_005"])
def test_timm_models_named_in_issue_27_are_factored_and_accepted(tmp_path, name):
    """As the issue's tester exported them: random weights, BatchNorm statistics from three
    train-mode passes (momentum 0.1: the features barely depend on the input), legacy exporter,
    opset 17; the usual Grad-CAM tensor (the global pool's input)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=10).train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(4, 3, 64, 64))
    net.eval()
    path = str(tmp_path / f"{name}.onnx")
    torch.onnx.export(net, (torch.rand(2, 3, 64, 64),), path, dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    graph = onnx.load(path).graph
    tap = next(n for n in graph.node if n.op_type == "GlobalAveragePool").input[0]
    model = export_onnx_classifier(path, tap, "logits")
    assert _layout(model) == "factored"
    checks = _checks(model)
    assert all(c.ok for c in checks.values()), {n: c.detail for n, c in checks.items()}
    x = np.random.default_rng(5).random((2, 3, 64, 64), dtype=np.float32)
    a, g = _engine_gradients(model, x)
    site = (lambda m: m.final_conv) if name == "regnetz_005" else (lambda m: m.stages[-1])
    assert _rel(g, _reference(net, x, site, a)) < 1e-6
