"""Issue 27: the torch module matched to an ONNX tensor must be unambiguous. timm's
zero_init_last makes layer4.1 an identity on layer4.0's (non-negative) output; matching by value
then picked `layer4`, whose gradient lacks layer4.1's ReLU mask (0.71 relative error)."""

import sys
from pathlib import Path

import pytest

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from conformance_models import torch_site  # noqa: E402


def _layer40_output(model, x):
    seen = {}
    h = model.layer4[0].register_forward_hook(lambda m, i, o: seen.setdefault("a", o.clone()))
    with torch.no_grad():
        model(x)
    h.remove()
    return seen["a"].numpy()


def test_identity_blocks_make_the_match_ambiguous_and_refused():
    torch.manual_seed(0)
    model = timm.create_model("resnet18d", pretrained=False, num_classes=4).eval()
    x = torch.rand(1, 3, 64, 64)
    assert torch_site(model, x, _layer40_output(model, x)) is None  # layer4.0 == layer4


def test_live_residual_branches_give_layer4_0():
    torch.manual_seed(0)
    model = timm.create_model("resnet18d", pretrained=False, num_classes=4).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.detach().any():
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    x = torch.rand(1, 3, 64, 64)
    assert torch_site(model, x, _layer40_output(model, x)) == ("layer4.0", "output")
