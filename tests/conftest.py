"""Shared fixtures: a small synthetic dataset made once per test session."""

from pathlib import Path

import pytest

from bincam.data.synth import synthesize


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """60 synthetic faces at 224 px in torchvision's CelebA layout (48 train, 6 valid, 6 test)."""
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, 60, seed=3)
    return root


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """160 synthetic faces at 64 px, for training tests."""
    root = tmp_path_factory.mktemp("synth64")
    synthesize(root, 160, seed=5, size=64)
    return root
