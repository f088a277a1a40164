"""Datasets: the CelebA reader (torchvision layout or pre-aligned folders) and the synthetic faces."""

from bincam.data.celeba import CelebA, SPLITS
from bincam.data.frontal import frontal_mask

__all__ = ["CelebA", "SPLITS", "frontal_mask"]
