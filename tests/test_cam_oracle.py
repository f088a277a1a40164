"""Binary CAMs equal pytorch-grad-cam's (the oracle) for every method, mode and attribute.

pytorch-grad-cam runs one call per attribute with ``BinaryLogitTarget`` (``|z|``, ``z`` or ``−z``).
Both sides run in float64, so the comparison measures formulas and epilogue rather than float32
noise, which min-max normalisation magnifies on flat maps (XGrad-CAM divides by ``Σ_hw A``, which
is near zero for some channels of a pre-ReLU tap). To afford 6 methods × 3 modes × 40 attributes
× 3 nets in CI, the grid runs on the net's head replayed from the CAM layer's recorded activations
(the real ReLU, average pool and Linear modules); ``test_head_replays_the_model`` checks that this
equals the full net, and ``test_oracle_on_full_nets`` compares against the unmodified nets.
"""

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import (GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM,  # noqa: E402
                              LayerCAM, XGradCAM)

from bincam import explain  # noqa: E402
from bincam.cam.targets import BinaryLogitTarget  # noqa: E402
from bincam.core.methods import METHODS  # noqa: E402
from bincam.core.modes import MODES  # noqa: E402
from bincam.nets import build_net, cam_module  # noqa: E402
from bincam.nets.taps import AffineHead, Tap  # noqa: E402

ORACLE = {"gradcam": GradCAM, "hirescam": HiResCAM, "gradcam-elementwise": GradCAMElementWise,
          "xgradcam": XGradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM}
TOL = 1e-5


def net_with_both_signs(arch, seed=0):
    """A random-init net whose logits take both signs across the batch for most attributes."""
    torch.manual_seed(seed)
    model = build_net(arch).eval().double()
    x = torch.rand(3, 3, 224, 224, dtype=torch.float64)
    last = model.get_submodule(model.affine_heads[model.default_cam_layer].linears[-1])
    with torch.no_grad():
        z = model(x)
        last.bias -= (z[0] + z[1]) / 2  # images 0 and 1 now fall on opposite sides
        z = model(x)
    assert (z > 0).any() and (z < 0).any()
    assert ((z > 0).any(0) & (z < 0).any(0)).float().mean() > 0.9
    return model, x


class ReplayHead(nn.Module):
    """The net after its CAM layer, fed with that layer's recorded activations."""

    def __init__(self, model, activations):
        super().__init__()
        self.head = model.affine_heads[model.default_cam_layer]
        self.arch_config = {"arch": "replay", "num_outputs": 40}
        self.cam_layers, self.default_cam_layer = {"tap": "tap"}, "tap"
        paths = tuple(f"linears.{i}" for i in range(len(self.head.linears)))
        self.affine_heads = {"tap": AffineHead(self.head.relu, paths)}
        self.linears = nn.ModuleList(model.get_submodule(p) for p in self.head.linears)
        self.tap = Tap()
        self.activations = activations

    def forward(self, x):
        a = self.tap(self.activations.clone().requires_grad_(True))
        f = torch.relu(a) if self.head.relu else a
        f = torch.flatten(nn.functional.adaptive_avg_pool2d(f, 1), 1)
        for lin in self.linears:
            f = lin(f)
        return f


def activations_of(model, x):
    got = {}
    handle = cam_module(model).register_forward_hook(lambda m, i, o: got.setdefault("a", o))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    return logits, got["a"]


def oracle_maps(model, layer_module, x, method, mode, attributes):
    with ORACLE[method](model=model, target_layers=[layer_module]) as cam:
        return np.stack([cam(x, targets=[BinaryLogitTarget(k, mode)] * len(x))
                         for k in attributes], axis=1)


@pytest.fixture(scope="module", params=["resnet18", "resnet50", "affact"])
def net(request):
    model, x = net_with_both_signs(request.param)
    logits, acts = activations_of(model, x)
    return model, x, logits, acts


def test_head_replays_the_model(net):
    model, x, logits, acts = net
    with torch.no_grad():
        assert torch.allclose(ReplayHead(model, acts)(x), logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", list(METHODS))
def test_all_modes_all_attributes(net, method):
    model, x, _, acts = net
    replay = ReplayHead(model, acts).eval()
    for mode in MODES:
        ours = explain(replay, x, method=method, mode=mode).heatmaps(224)
        expected = oracle_maps(replay, replay.tap, x, method, mode, range(40))
        diff = np.abs(ours - expected).max()
        assert diff <= TOL, f"{method}/{mode}: max abs diff {diff:.2e}"


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "affact"])
def test_oracle_on_full_nets(arch):
    model, x = net_with_both_signs(arch)
    logits = model(x).detach()
    mixed = int(((logits > 0).any(0) & (logits < 0).any(0)).float().argmax())
    attrs = [mixed, 39]
    for method in ("gradcam", "xgradcam", "gradcam++"):  # the grid above covers every method
        ours = explain(model, x, method=method, attributes=attrs).heatmaps(224)
        expected = oracle_maps(model, cam_module(model), x, method, "predicted", attrs)
        assert np.abs(ours - expected).max() <= TOL, method


def test_autograd_path_on_an_intermediate_layer():
    model, x = net_with_both_signs("resnet18")
    for method in METHODS:
        result = explain(model, x, method=method, layer="layer3", attributes=[3, 17])
        assert not result.factored
        expected = oracle_maps(model, cam_module(model, "layer3"), x, method, "predicted", [3, 17])
        assert np.abs(result.heatmaps(224) - expected).max() <= TOL, method
