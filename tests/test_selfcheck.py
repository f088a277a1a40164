"""The torch-free self-checks of ``export --onnx``: finite differences, tie conventions and the
factored head catch wrong gradient graphs and confirm correct constant ones."""

import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from bincam.export.checks import run_checks
from bincam.export.forward import export_module
from bincam.export.model import export_onnx_classifier


def _export(module: nn.Module, path, size: int = 12) -> str:
    return export_module(module, path, size)


def _tap(path, op: str, index: int = -1) -> str:
    return [n.output[0] for n in onnx.load(path).graph.node if n.op_type == op][index]


def _results(model) -> dict:
    return {c.name: c for c in run_checks(model)}


@pytest.fixture
def vgg_like(tmp_path):
    """vgg's Grad-CAM layer in miniature: conv → ReLU (the tap) → 2×2 MaxPool → MLP head."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 5))
    path = _export(net, tmp_path / "vgg.onnx")
    return path, _tap(path, "Relu", 0)


def test_correct_dense_graph_passes_every_self_check(vgg_like):
    path, tap = vgg_like
    checks = _results(export_onnx_classifier(path, tap, "logits", gradients="dense"))
    assert all(c.ok for c in checks.values()), {n: c.detail for n, c in checks.items()}
    assert any(name.startswith("self-check: finite differences") for name in checks)
    assert "self-check: ties" in checks


def test_the_old_maxpool_rule_fails_the_tie_check(vgg_like, monkeypatch):
    """The rule that sent a tied window's gradient to all its maxima (vgg: Grad-CAM weights off
    by up to 213 %) is caught without torch."""
    from bincam.export import rules

    def all_maxima(b, node, dys, wanted):
        x, y = node.input[0], node.output[0]
        up = [1.0, 1.0, 2.0, 2.0]
        up_y = b.node("Resize", [y, "", b.const(up, "scales")], "up_y", mode="nearest")
        up_dy = b.node("Resize", [dys[y], "", b.const([1.0] + up, "scales")], "up_dy",
                       mode="nearest")
        is_max = b.node("Equal", [x, up_y], "is_max")
        return {x: b.node("Where", [is_max, up_dy, b.const(0.0, "zero")], "maxpool")}

    monkeypatch.setitem(rules.RULES, "MaxPool", all_maxima)
    path, tap = vgg_like
    checks = _results(export_onnx_classifier(path, tap, "logits", gradients="dense"))
    assert not checks["self-check: ties"].ok


def test_a_wrong_factor_fails_the_finite_differences(vgg_like):
    path, tap = vgg_like
    model = export_onnx_classifier(path, tap, "logits", gradients="dense")
    producer = next(n for n in model.graph.node if "gradients" in n.output)
    producer.output[list(producer.output).index("gradients")] = "gradients_raw"
    model.graph.initializer.append(onnx.numpy_helper.from_array(
        __import__("numpy").array(1.5, dtype="float32"), "bad_factor"))
    model.graph.node.append(helper.make_node("Mul", ["gradients_raw", "bad_factor"],
                                             ["gradients"]))
    checks = _results(model)
    fd = next(c for name, c in checks.items() if name.startswith("self-check: finite"))
    assert not fd.ok


def test_post_relu_tap_before_an_affine_head_is_factored_and_accepted(tmp_path):
    """resnet's usual Grad-CAM layer: the true gradient W/(h·w) is constant in the input."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 6), nn.Linear(6, 4))
    path = _export(net, tmp_path / "cnn.onnx")
    tap = _tap(path, "Relu")
    factored = export_onnx_classifier(path, tap, "logits")
    meta = {p.key: p.value for p in factored.metadata_props}
    assert meta["bincam.gradient_layout"] == "factored" and meta["bincam.mask_positive"] == "false"
    checks = _results(factored)
    assert all(c.ok for c in checks.values()) and "self-check: factored head" in checks
    dense = _results(export_onnx_classifier(path, tap, "logits", gradients="dense"))
    assert dense["input dependence"].ok, dense["input dependence"].detail
    assert "finite differences confirm" in dense["input dependence"].detail
    conv = _tap(path, "Conv")  # pre-ReLU: the head starts with ReLU, the mask is kept
    meta = {p.key: p.value for p in export_onnx_classifier(path, conv, "logits").metadata_props}
    assert meta["bincam.gradient_layout"] == "factored" and meta["bincam.mask_positive"] == "true"


class _Pairs(nn.Module):
    """Pooled ``[B, C]`` → ``[B, C/2, 2]``: a Linear then mixes pairs, not channels."""

    def forward(self, x):
        return x.reshape(x.shape[0], -1, 2)


def test_a_head_that_reshapes_the_pooled_channels_is_not_taken_for_affine(tmp_path):
    """Factoring it as ``W·mean(A)`` would be silently wrong; it stays dense and correct."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        _Pairs(), nn.Linear(2, 3), nn.Flatten(), nn.Linear(12, 4))
    path = _export(net, tmp_path / "pairs.onnx")
    model = export_onnx_classifier(path, _tap(path, "Relu"), "logits")
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["bincam.gradient_layout"] == "dense"
    checks = _results(model)
    assert all(c.ok for c in checks.values()), {n: c.detail for n, c in checks.items()}
