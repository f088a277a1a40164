"""The core CAM method registry: each method's factored form equals its dense form, on NumPy
arrays and on torch tensors alike; names and kernel ids are unique; modes give the right signs."""

import numpy as np
import pytest
import torch

from bincam.core.methods import METHODS, CamMethod, Factored, factored_gradients, raw_maps
from bincam.core.modes import MODES, signs
from bincam.errors import BincamError


def _case(mask_positive: bool):
    rng = np.random.default_rng(7)
    a = rng.normal(size=(3, 12, 5, 5))
    a[1, 4] = 0.0                                       # an all-zero channel
    weight = rng.normal(size=(4, 12)) / 25
    logits = np.array([[1.0, -2.0, 0.0, 0.5]] * 2 + [[-1.0, 2.0, 3.0, -0.5]])  # one z = 0
    return a, factored_gradients(a, signs(logits, "predicted"), weight, mask_positive)


def test_registry_names_and_kernel_ids():
    assert list(METHODS) == ["gradcam", "hirescam", "gradcam-elementwise", "xgradcam",
                             "gradcam++", "layercam"]
    assert sorted(m.id for m in METHODS.values()) == list(range(6))
    assert all(m.__doc__ and "map" in m.__doc__ for m in METHODS.values())  # formula documented
    assert MODES == {"predicted": 0, "positive": 1, "negative": 2}


def test_a_method_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="registered twice"):
        type("Again", (CamMethod,), {"name": "gradcam", "id": 99})
    assert METHODS["gradcam"].__name__ == "GradCAM"


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("mask_positive", [True, False])
def test_factored_equals_dense(name, mask_positive):
    a, g = _case(mask_positive)
    dense = g.dense(a.shape[-2:])
    factored = raw_maps(name, a, g)
    expected = raw_maps(name, a, dense)
    assert factored.shape == (3, 4, 5, 5)
    assert np.allclose(factored, expected, rtol=1e-10, atol=1e-12)
    assert np.all(factored[0, 2] == 0) and np.all(factored[1, 2] == 0)  # z = 0: an empty map


@pytest.mark.parametrize("name", list(METHODS))
def test_the_same_code_runs_on_torch_tensors(name):
    a, g = _case(True)
    t = Factored(*(torch.from_numpy(v) for v in (g.sign, g.weight, g.mask)))
    on_torch = raw_maps(name, torch.from_numpy(a), t)
    assert isinstance(on_torch, torch.Tensor)
    assert np.allclose(on_torch.numpy(), raw_maps(name, a, g), rtol=1e-12, atol=1e-14)
    dense = raw_maps(name, torch.from_numpy(a), torch.from_numpy(g.dense(a.shape[-2:])))
    assert np.allclose(dense.numpy(), raw_maps(name, a, g), rtol=1e-10, atol=1e-12)


def test_modes_and_unknown_names():
    z = np.array([[2.0, -0.5, 0.0]])
    assert signs(z, "predicted").tolist() == [[1.0, -1.0, 0.0]]
    assert signs(z, "positive").tolist() == [[1.0, 1.0, 1.0]]
    assert signs(z, "negative").tolist() == [[-1.0, -1.0, -1.0]]
    with pytest.raises(BincamError, match="unknown mode 'both'; choose one of predicted"):
        signs(z, "both")
    a, g = _case(True)
    with pytest.raises(BincamError, match="unknown method 'scorecam'; choose one of gradcam"):
        raw_maps("scorecam", a, g)


def test_nan_and_zero_logits_agree_between_dense_and_factored_forms():
    """A NaN logit gives a NaN map and a zero logit an empty one, in both forms of every method
    (an empty map for a NaN logit would read as "no evidence")."""
    from bincam.core.methods import METHODS, factored_gradients, raw_maps

    rng = np.random.default_rng(5)
    a, w = rng.normal(size=(1, 4, 3, 3)), rng.normal(size=(2, 4))
    sign = np.array([[np.nan, 0.0]])
    dense = sign[:, :, None, None, None] * np.broadcast_to(
        w[None, :, :, None, None] / 9, (1, 2, 4, 3, 3))
    for method in METHODS:
        for maps in (raw_maps(method, a, factored_gradients(a, sign, w, False)),
                     raw_maps(method, a, dense)):
            assert np.isnan(maps[0, 0]).all(), method
            assert np.nan_to_num(maps[0, 1], nan=1.0).max() == 0.0, method


def test_a_nan_activation_marks_the_same_pixels_in_both_forms_whatever_the_sign():
    """A NaN activation is NaN in the dense form even under a zero logit (``0·NaN``); the
    factored form (and the CUDA kernel) must mark the same pixels, not an empty map."""
    from bincam.core.methods import METHODS, factored_gradients, raw_maps

    rng = np.random.default_rng(11)
    a, w = rng.normal(size=(1, 4, 3, 3)), rng.normal(size=(4, 4)) / 9
    a[0, 1, 2, 0] = np.nan
    sign = np.array([[0.0, 1.0, -1.0, np.nan]])
    for mask_positive in (False, True):
        fac = factored_gradients(a, sign, w, mask_positive)
        dense = fac.dense((3, 3))
        for method in METHODS:
            got, want = raw_maps(method, a, fac), raw_maps(method, a, dense)
            assert (np.isnan(got) == np.isnan(want)).all(), (method, mask_positive)
            assert np.isnan(got[0, 0]).any(), (method, mask_positive)
            ok = ~np.isnan(want)
            np.testing.assert_allclose(got[ok], want[ok], atol=1e-12, err_msg=method)
