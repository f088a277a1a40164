"""CAM core: closed form = autograd, epilogue = OpenCV/NumPy, fast PE = full PE, binary modes
through the torch engine, and input validation."""

import numpy as np
import pytest
import torch

from bincam import explain
from bincam.attributes import ATTRIBUTES, attribute_masks
from bincam.cam.epilogue import epilogue as torch_epilogue
from bincam.cam.gradients import effective_head, layer_gradients
from bincam.core.energy import MaskEnergy, proportional_energy_full
from bincam.core.epilogue import epilogue, upsample
from bincam.errors import BincamError
from bincam.nets import build_net


@pytest.mark.parametrize("arch,size", [("small", 112), ("resnet18", 224), ("affact", 224)])
@pytest.mark.parametrize("layer_suffix", ["pre", "post"])
def test_closed_form_equals_autograd(arch, size, layer_suffix):
    torch.manual_seed(1)
    model = build_net(arch).eval()
    layer = model.default_cam_layer if layer_suffix == "pre" else \
        [name for name in model.affine_heads if name != model.default_cam_layer][0]
    x = torch.rand(2, 3, size, size)
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        model, x = model.to(dtype), x.to(dtype)
        closed = layer_gradients(model, x, layer, list(range(40)), closed_form=True)
        auto = layer_gradients(model, x, layer, list(range(40)), closed_form=False)
        relu = effective_head(model, layer)[2]
        a = closed.activations
        mask = (a > 0).to(a.dtype) if relu else torch.ones_like(a)
        dense = (closed.channel_weights[None, :, :, None, None] * mask[:, None]).to(a.dtype)
        rel = ((dense - auto.grads).norm() / auto.grads.norm()).item()
        assert rel <= tol, (dtype, rel)
        assert torch.equal(closed.logits, auto.logits)


def test_closed_form_is_automatic_and_can_be_forced_off():
    model = build_net("small", width=8).eval()
    x = torch.rand(2, 3, 64, 64)
    assert explain(model, x).factored
    assert not explain(model, x, closed_form=False).factored
    assert not explain(model, x, layer="layer3").factored
    with pytest.raises(BincamError, match="no closed form"):
        explain(model, x, layer="layer3", closed_form=True)


def test_predicted_mode_switches_sign_per_image():
    torch.manual_seed(3)
    model = build_net("small", width=8).eval()
    x = torch.rand(4, 3, 64, 64)
    pred = explain(model, x, mode="predicted")
    pos = explain(model, x, mode="positive")
    neg = explain(model, x, mode="negative")
    chosen = np.where(pred.logits[..., None, None] >= 0, pos.raw, neg.raw)
    assert np.allclose(pred.raw, chosen)
    assert set(np.unique(pred.signs).tolist()) <= {-1.0, 0.0, 1.0}


def test_epilogue_matches_opencv_and_numpy():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(4)
    x = rng.random((7, 7)).astype(np.float32)
    assert np.abs(cv2.resize(x, (224, 224)) - upsample(x.astype(np.float64), (224, 224))).max() < 1e-6
    y = rng.random((5, 9)).astype(np.float32)
    assert np.abs(cv2.resize(y, (90, 50)) - upsample(y.astype(np.float64), (50, 90))).max() < 1e-6
    raw = rng.normal(size=(2, 3, 7, 7))
    exact = torch_epilogue(torch.from_numpy(raw), 224, dtype=torch.float64).numpy()
    assert np.abs(exact - epilogue(raw, 224)).max() < 1e-12
    assert np.abs(torch_epilogue(torch.from_numpy(raw), 224).numpy() - exact).max() < 1e-6
    raw[0, 0] = -1.0  # all negative: an all-zero map
    assert np.all(epilogue(raw, 224)[0, 0] == 0)


@pytest.mark.parametrize("size,feature", [(224, (7, 7)), (112, (7, 7)), (224, (14, 14)),
                                          (160, (5, 5))])
def test_fast_pe_equals_full_resolution(size, feature):
    rng = np.random.default_rng(5)
    raw = rng.normal(size=(6, 40, *feature))
    raw[0, 0] = -1.0                      # empty map
    raw[1, 1] = 3.0                       # constant map: empty after min-max
    raw[2, 2] = -1.0
    raw[2, 2, 3, 3] = 2.0                 # one hot cell
    masks = attribute_masks(ATTRIBUTES, size)
    full = proportional_energy_full(epilogue(raw, size), masks)
    energy = MaskEnergy(masks, feature)
    fast = energy(raw)
    assert np.abs(full - fast).max() <= 1e-6
    assert fast[0, 0] == 0 and fast[1, 1] == 0
    assert np.allclose(energy.corrected(raw), fast * (1 - masks.sum((1, 2)) / size ** 2))


def test_explanation_pe_and_heatmaps():
    torch.manual_seed(6)
    model = build_net("small", width=8).eval()
    x = torch.rand(2, 3, 112, 112)
    result = explain(model, x, attributes=["Eyeglasses", "Wearing_Hat"])
    maps = result.heatmaps()
    assert maps.shape == (2, 2, 112, 112) and maps.dtype == np.float32
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    masks = attribute_masks(["Eyeglasses", "Wearing_Hat"], 112)
    full = proportional_energy_full(maps.astype(np.float64), masks)
    assert np.abs(result.proportional_energy() - full).max() < 1e-5
    assert result.probabilities.shape == (2, 2)


def test_input_validation():
    model = build_net("small", width=8).eval()
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(BincamError, match="add a batch axis"):
        explain(model, x[0])
    with pytest.raises(BincamError, match=r"shape \[B, 3, S, S\]"):
        explain(model, torch.rand(2, 1, 64, 64))
    with pytest.raises(BincamError, match="divide 0–255 images by 255"):
        explain(model, x * 255)
    bad = x.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(BincamError, match=r"images \[1\] contain NaN"):
        explain(model, bad)
    with pytest.raises(BincamError, match="unknown attribute"):
        explain(model, x, attributes=["Sunglasses"])
    with pytest.raises(BincamError, match="valid layers"):
        explain(model, x, layer="res5c")
    with pytest.raises(BincamError, match="unknown method"):
        explain(model, x, method="scorecam")
    uint8 = (x * 255).to(torch.uint8)
    assert explain(model, uint8).raw.shape == (2, 40, 4, 4)
    with pytest.raises(BincamError, match="training mode"):
        explain(model.train(), x)


def test_effective_head_cache_follows_weight_changes():
    model = build_net("affact").eval()
    w1, b1, relu = effective_head(model, "res5c")
    assert relu and effective_head(model, "res5c")[0] is w1  # cached
    with torch.no_grad():
        model.attributes_1.weight.mul_(2.0)                  # in place, as an optimizer step is
    w2, b2, _ = effective_head(model, "res5c")
    w_attr = model.attributes_1.weight.double()
    assert torch.allclose(w2, 2 * w1)
    assert torch.allclose(w2, w_attr @ model.fc1000_1.weight.double())
    assert torch.allclose(b2, w_attr @ model.fc1000_1.bias.double() +
                          model.attributes_1.bias.double())
