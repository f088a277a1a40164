"""Networks: output shapes, named CAM layers, pre-ReLU taps, AFFACT's Caffe geometry."""

import pytest
import torch

from bincam.errors import BincamError
from bincam.nets import build_net, cam_module


def capture(model, layer, x):
    got = {}
    handle = cam_module(model, layer).register_forward_hook(lambda m, i, o: got.setdefault("a", o))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    return logits, got["a"]


@pytest.mark.parametrize("arch,size,channels", [("small", 112, 128), ("resnet18", 224, 512),
                                                ("resnet50", 224, 2048), ("affact", 224, 2048)])
def test_final_tap_is_pre_relu(arch, size, channels):
    torch.manual_seed(0)
    model = build_net(arch).eval()
    logits, act = capture(model, None, torch.rand(2, 3, size, size))
    assert logits.shape == (2, 40)
    assert act.shape == (2, channels, 7, 7)
    assert (act < 0).any(), "the default CAM layer must be the pre-ReLU residual sum"
    assert model.default_cam_layer in model.cam_layers


def test_post_relu_and_intermediate_layers():
    model = build_net("resnet18").eval()
    _, post = capture(model, "layer4", torch.rand(1, 3, 224, 224))
    assert (post >= 0).all()
    _, mid = capture(model, "layer3", torch.rand(1, 3, 224, 224))
    assert mid.shape == (1, 256, 14, 14)
    with pytest.raises(BincamError, match="valid layers: layer1"):
        cam_module(model, "res5c")


def test_affact_names_and_stem():
    model = build_net("affact")
    names = dict(model.named_children())
    for name in ("conv1", "bn_conv1", "res2a_branch1", "res3a_branch2a", "res5c_branch2c",
                 "fc1000_1", "attributes_1"):
        assert name in names
    assert model.res3a_branch2a.stride == (2, 2) and model.res3a_branch2b.stride == (1, 1)
    assert model.bn_conv1.eps == 1e-5
    assert model.fc1000_1.out_features == 1000
    assert set(model.cam_layers) >= {"res5c", "res5c_relu", "res4f"}
    feats = {}
    model.res2a.register_forward_hook(lambda m, i, o: feats.setdefault("res2a", o))
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, 224, 224))
    assert feats["res2a"].shape == (1, 256, 56, 56)  # Caffe's ceil-mode pool: 112 → 56


def test_unknown_architecture():
    with pytest.raises(BincamError, match="unknown architecture 'vgg'"):
        build_net("vgg")
