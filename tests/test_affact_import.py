"""AFFACT import: a KitModel-shaped pickle converts exactly; a code-execution payload is refused."""

import copy
import os

import pytest
import torch
from torch import nn

from bincam.affact_import import convert_affact
from bincam.checkpoint import load_checkpoint
from bincam.errors import BincamError
from bincam.nets.affact import AFFACT


class KitModel(nn.Module):
    """Stands in for MMdnn's generated class: flat Caffe-named layers, convs with biases."""

    def __init__(self, ref: AFFACT):
        super().__init__()
        for name, mod in ref.named_children():
            if isinstance(mod, nn.Conv2d):
                conv = nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride,
                                 bias=True)
                conv.weight.data.copy_(mod.weight)
                setattr(self, name, conv)
            elif isinstance(mod, (nn.BatchNorm2d, nn.Linear)):
                setattr(self, name, copy.deepcopy(mod))


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    ref = AFFACT().eval()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    kit = KitModel(ref).eval()
    kit.conv1.bias.data.copy_(ref.conv1.bias)
    for name, mod in kit.named_children():  # biased convs: the reference folds them into BN
        if name.startswith("res"):
            mod.bias.data.normal_(0, 0.05)
            getattr(ref, "bn" + name[3:]).running_mean.data -= mod.bias.data
    return ref, kit


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_kitmodel_pickle_converts_exactly(tmp_path, reference, zip_format):
    ref, kit = reference
    path = tmp_path / "affact.pth"
    torch.save(kit, path, _use_new_zipfile_serialization=zip_format)
    convert_affact(path, tmp_path / "ckpt")
    model = load_checkpoint(tmp_path / "ckpt")
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = ref(x), model(x)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    assert model.card.attributes[0] == "5_o_Clock_Shadow"
    assert model.card.default_cam_layer == "res5c"


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_code_execution_payload_is_refused(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": _Payload(marker)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(BincamError, match=r"refused: the pickle asks for (posix|os)\.system"):
        convert_affact(path, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"definitely not a pickle")
    with pytest.raises(BincamError, match="not"):
        convert_affact(path, tmp_path / "out")
