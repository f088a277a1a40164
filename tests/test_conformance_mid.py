"""The mid-network tensor search of the timm conformance table (benchmarks/conformance_mid.py) on
tiny hand-made models with the call structures that defeated the old scope guess
(``/a/a.b/a.b.c/``): a ModuleList iterated (BEiT, CoaT, FastViT: no scope of its own), nested
non-numeric names (Xception's ``blocks.2.stack.act3`` is scoped ``/blocks/blocks.2/stack/act3``),
``feature_info`` naming modules that do not exist (Twins' ``block.k``), a module whose output is a
list (CrossViT's branches), a module called twice. The tensor found must be one ``torch_site``
finds again in torch, and never the usual Grad-CAM tensor."""

import sys
from collections import OrderedDict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import conformance_mid  # noqa: E402
from conformance_models import torch_site  # noqa: E402
from conformance_timm import export_legacy  # noqa: E402

from torch import nn  # noqa: E402

SIZE = 16


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.stack = nn.Sequential(OrderedDict(conv=nn.Conv2d(c, c, 3, padding=1),
                                               act=nn.Tanh()))

    def forward(self, x):
        return x + self.stack(x)


class TwoBranch(nn.Module):
    """Returns a list, made by ops of its own (no module's output): CrossViT's blocks."""

    def __init__(self, c):
        super().__init__()
        self.b0, self.b1 = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return [self.b0(x) * 2.0, self.b1(x) + 1.0]


class Net(nn.Module):
    def __init__(self, feature_modules, pair=False, twice=False):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList([Block(8) for _ in range(4)])  # iterated, never called
        self.pair = TwoBranch(8) if pair else None
        self.shared = nn.Conv2d(8, 8, 1) if twice else None
        self.head = nn.Linear(8, 5)
        self.feature_info = [dict(module=m) for m in feature_modules]

    def forward(self, x):
        x = self.stem(x)
        if self.pair is not None:
            a, b = self.pair(x)
            x = a - b
        for block in self.blocks:
            x = block(x)
            if self.shared is not None:
                x = self.shared(x)  # one module called 4 times: scopes shared, shared_1, …
        return self.head(x.mean((2, 3)))


def _mid(net, usual=None, tmp_path=None):
    import onnx

    net.eval()
    path = tmp_path / "net.onnx"
    export_legacy(net, SIZE, path)
    model = onnx.load(str(path))
    tensor = conformance_mid.mid_tensor(model, net, usual)
    x = conformance_mid.harness_input(SIZE)
    value = conformance_mid.tensor_values(model, [tensor], x)[tensor]
    return tensor, torch_site(net, torch.from_numpy(x), value)


def test_scope_names_follow_the_exporter():
    assert conformance_mid.unqualified("stages.1.1") == "stages.1.1"
    assert conformance_mid.unqualified("blocks.2.stack.act3") == "act3"
    assert conformance_mid.unqualified("features.denseblock2") == "denseblock2"
    assert conformance_mid.unqualified("blocks.0") == "blocks.0"
    net = Net(["blocks.2"]).eval()
    scopes, _, calls = conformance_mid.call_scopes(net, torch.rand(1, 3, SIZE, SIZE))
    assert scopes["blocks.2"] == {"/blocks.2"}  # the ModuleList adds no scope
    assert scopes["blocks.2.stack.act"] == {"/blocks.2/stack/act"}
    assert "blocks" not in scopes and calls["blocks.2"] == 1
    known = {"/blocks.2", "/blocks.2/stack", "/shared"}
    assert conformance_mid.node_scope("/blocks.2/stack/conv/Conv", known) == "/blocks.2/stack"
    assert conformance_mid.node_scope("/shared_3/Conv", known) == "/shared"
    assert conformance_mid.node_scope("/Concat_1", known) is None


@pytest.mark.parametrize("features, site", [
    (["stem", "blocks.1", "blocks.2", "blocks.3"], ("blocks.2", "output")),  # ModuleList
    (["blocks.0.stack.act", "blocks.1.stack.act", "blocks.2.stack.act"],
     ("blocks.1.stack", "output")),  # nested names; the Sequential's output is act's
    (["block.1", "block.2", "block.3"], ("blocks.2", "output")),  # no such modules: fallback
])
def test_mid_tensor_is_a_module_output_torch_finds_again(tmp_path, features, site):
    tensor, found = _mid(Net(features), tmp_path=tmp_path)
    assert found == site, (tensor, found)


def test_a_list_output_falls_back_to_a_submodule(tmp_path):
    tensor, found = _mid(Net(["stem", "pair", "blocks.3"], pair=True), tmp_path=tmp_path)
    assert found == ("pair.b1", "output"), (tensor, found)


def test_never_the_usual_tensor_and_repeated_calls_are_skipped(tmp_path):
    net = Net(["stem", "blocks.1", "blocks.3"], twice=True)
    first, found = _mid(net, tmp_path=tmp_path)
    # blocks.1's output feeds `shared`, called 4 times: its output is no unique module's, so
    # the verified tensor is blocks.1's own output
    assert found == ("blocks.1", "output"), (first, found)
    second, found = _mid(net, usual=first, tmp_path=tmp_path)
    assert second != first and found is not None, (second, found)
