"""The torch-free NumPy CAM methods equal the torch ones (dense and factored gradients)."""

import numpy as np
import pytest
import torch

from bincam.cam.methods import METHODS, FactoredGrad
from bincam.runtime.cam_np import raw_maps, signs


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("mask_positive", [True, False])
def test_numpy_methods_equal_torch(name, mask_positive):
    rng = np.random.default_rng(7)
    a = rng.normal(size=(3, 12, 5, 5))
    weight = rng.normal(size=(4, 12)) / 25
    logits = np.array([[1.0, -2.0, 0.0, 0.5]] * 2 + [[-1.0, 2.0, 3.0, -0.5]])
    s = signs(logits, "predicted")
    mask = (a > 0).astype(float) if mask_positive else None
    fg = FactoredGrad(torch.from_numpy(s), torch.from_numpy(weight),
                      None if mask is None else torch.from_numpy(mask))
    expected = METHODS[name](torch.from_numpy(a), fg).numpy()
    factored = raw_maps(name, a, s, weight=weight, mask_positive=mask_positive)
    dense_grads = weight[None, :, :, None, None] * (mask if mask is not None else np.ones_like(a))[:, None]
    dense = raw_maps(name, a, s, grads=dense_grads)
    assert np.allclose(factored, expected, rtol=1e-10, atol=1e-12)
    assert np.allclose(dense, expected, rtol=1e-10, atol=1e-12)


def test_modes_in_numpy():
    z = np.array([[2.0, -0.5, 0.0]])
    assert signs(z, "predicted").tolist() == [[1.0, -1.0, 0.0]]
    assert signs(z, "negative").tolist() == [[-1.0, -1.0, -1.0]]
