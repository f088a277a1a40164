"""CAM core: closed form = autograd, factored = dense, epilogue = OpenCV/NumPy, fast PE = full PE,
binary modes, and input validation."""

import numpy as np
import pytest
import torch

from bincam import explain
from bincam.attributes import ATTRIBUTES, attribute_masks
from bincam.cam.epilogue import epilogue as torch_epilogue
from bincam.cam.gradients import layer_gradients
from bincam.cam.methods import METHODS, FactoredGrad
from bincam.cam.modes import signs
from bincam.errors import BincamError
from bincam.heatmap import MaskEnergy, epilogue, proportional_energy_full, upsample
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
        dense = closed.grads.dense(closed.activations.shape[-2:]).to(auto.grads.dtype)
        rel = ((dense - auto.grads).norm() / auto.grads.norm()).item()
        assert rel <= tol, (dtype, rel)
        assert torch.equal(closed.logits, auto.logits)


def test_closed_form_is_automatic_and_can_be_forced_off():
    model = build_net("small", width=8).eval()
    x = torch.rand(2, 3, 64, 64)
    assert explain(model, x).closed_form
    assert not explain(model, x, closed_form=False).closed_form
    assert not explain(model, x, layer="layer3").closed_form
    with pytest.raises(BincamError, match="no closed form"):
        explain(model, x, layer="layer3", closed_form=True)


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("masked", [True, False])
def test_factored_equals_dense(name, masked):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(3, 16, 5, 5, generator=g, dtype=torch.float64)
    sign = torch.tensor([[1.0, -1.0, 0.0, 1.0]] * 3, dtype=torch.float64)
    weight = torch.randn(4, 16, generator=g, dtype=torch.float64) / 25
    mask = (a > 0).double() if masked else None
    fg = FactoredGrad(sign, weight, mask)
    fast, slow = METHODS[name](a, fg), METHODS[name](a, fg.dense((5, 5)))
    assert torch.allclose(fast, slow, rtol=1e-10, atol=1e-12)
    assert torch.all(fast[:, 2] == 0)  # s = 0 (z exactly 0) gives an empty map


def test_modes():
    z = torch.tensor([[2.0, -0.5, 0.0]])
    assert signs(z, "predicted").tolist() == [[1.0, -1.0, 0.0]]
    assert signs(z, "positive").tolist() == [[1.0, 1.0, 1.0]]
    assert signs(z, "negative").tolist() == [[-1.0, -1.0, -1.0]]
    with pytest.raises(BincamError, match="unknown mode"):
        signs(z, "both")


def test_predicted_mode_switches_sign_per_image():
    torch.manual_seed(3)
    model = build_net("small", width=8).eval()
    x = torch.rand(4, 3, 64, 64)
    pred = explain(model, x, mode="predicted")
    pos = explain(model, x, mode="positive")
    neg = explain(model, x, mode="negative")
    chosen = torch.where(pred.logits[..., None, None] >= 0, pos.raw, neg.raw)
    assert torch.allclose(pred.raw, chosen)
    assert set(pred.signs.unique().tolist()) <= {-1.0, 0.0, 1.0}


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
    assert maps.shape == (2, 2, 112, 112) and maps.dtype == torch.float32
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    masks = attribute_masks(["Eyeglasses", "Wearing_Hat"], 112)
    full = proportional_energy_full(maps.double().numpy(), masks)
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
    from bincam.cam.gradients import effective_head

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
