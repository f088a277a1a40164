"""The pytorch-grad-cam target for the paper's rule scores |z|, z or −z of one attribute."""

import pytest
import torch

from bincam.cam.targets import BinaryLogitTarget


def test_scores():
    z = torch.tensor([0.5, -2.0, 0.0])
    assert BinaryLogitTarget(1)(z) == 2.0
    assert BinaryLogitTarget(1, "positive")(z) == -2.0
    assert BinaryLogitTarget(1, "negative")(z) == 2.0
    batch = torch.tensor([[1.0, -3.0], [-1.0, 4.0]])
    assert BinaryLogitTarget(1)(batch).tolist() == [3.0, 4.0]
    with pytest.raises(ValueError):
        BinaryLogitTarget(0, "both")


def test_gradient_is_signed_by_the_prediction():
    z = torch.tensor([1.5, -0.5, 0.0], requires_grad=True)
    for k, expected in enumerate((1.0, -1.0, 0.0)):
        (g,) = torch.autograd.grad(BinaryLogitTarget(k)(z), z)
        assert g[k] == expected
