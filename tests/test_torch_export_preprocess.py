"""``bincam export --torch`` (and ``bincam.export_torch``) with the net's own preprocessing
declared: the options are recorded in the file's metadata (not refused as a checkpoint's), the
export's checks still compare the file with the net on the net's own input tensor, and every
engine then feeds the file what the net takes: logits equal the net on hand-preprocessed arrays.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

import bincam
from bincam.core.model_info import load_onnx, onnx_info
from bincam.errors import BincamError
from bincam.runtime import open_engine
from cli_run import run_cli

FACTORY = """
import torch
from torch import nn

def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
"""
ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
MEAN, STD = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)  # in the model's (BGR) channel order
DECLARED = ["--pixel-range", "255", "--mean", ",".join(map(str, MEAN)),
            "--std", ",".join(map(str, STD)), "--channel-order", "bgr", "--size", str(SIZE),
            "--fit", "stretch"]


def tiny():
    """The net the factory file makes (the same weights)."""
    names = {}
    exec(FACTORY, names)  # noqa: S102 - the test's own source text
    return names["tiny"]()


def by_hand(pixels: np.ndarray) -> torch.Tensor:
    """What the net was trained on: BGR, 0–255, minus mean, over std (NCHW)."""
    x = pixels.astype(np.float64)[:, ::-1]
    x = (x - np.array(MEAN)[None, :, None, None]) / np.array(STD)[None, :, None, None]
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


@pytest.fixture
def factory_dir(tmp_path, monkeypatch):
    (tmp_path / "prep_models.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_cli_torch_records_declared_preprocessing(factory_dir):
    status, text = run_cli(["export", "--torch", "prep_models:tiny", "--layer", "2",
                            "--out", "m.onnx", *DECLARED])
    assert status == 0, text
    assert "a checkpoint's input" not in text
    info = onnx_info(load_onnx(factory_dir / "m.onnx")[0], "m.onnx")
    assert (info.pixel_range, info.mean, info.std) == ((0.0, 255.0), MEAN, STD)
    assert (info.channel_order, info.layout, info.input_fit) == ("bgr", "nchw", "stretch")
    assert info.image_size == SIZE and not info.raw_pixels

    net = tiny().eval()
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, SIZE, SIZE), dtype=np.uint8)
    expected = net(by_hand(pixels)).detach().numpy()
    with open_engine(factory_dir / "m.onnx") as engine:  # fed RGB pixels, as every command
        got = engine.explain(pixels).logits
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
    mine = bincam.explain(net, by_hand(pixels), layer="2", input_size=SIZE)
    with open_engine(factory_dir / "m.onnx") as engine:
        np.testing.assert_allclose(engine.explain(pixels).heatmaps(), mine.heatmaps(),
                                   atol=1e-4)

    status, text = run_cli(["export", "--torch", "prep_models:tiny", "--layer", "2",
                            "--out", "raw.onnx", "--raw-pixels", *DECLARED])
    assert status == 0, text
    with open_engine(factory_dir / "raw.onnx") as engine:  # normalised inside the graph
        assert engine.info.raw_pixels
        got = engine.explain(pixels).logits
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("extra, message", [
    (["--layout", "nhwc"], "error: --layout nhwc: a torch model is exported with the NCHW input"),
    (["--mean", "0.5,0.5"], "error: --mean needs 3 values"),
    (["--std", "1,0,1"], "error: --std values must be positive"),
])
def test_cli_torch_impossible_preprocessing_is_one_error(factory_dir, extra, message):
    status, text = run_cli(["export", "--torch", "prep_models:tiny", "--layer", "2",
                            "--out", "m.onnx", *extra])
    assert status == 2 and text.startswith(message) and "Traceback" not in text, text
    assert not (factory_dir / "m.onnx").exists()


def test_checkpoint_still_refuses_declared_preprocessing(tmp_path):
    status, text = run_cli(["export", str(ROOT / "models/synth-small-balanced"), "--out",
                            str(tmp_path / "m.onnx"), "--mean", "0.5,0.5,0.5"])
    assert status == 2 and "a checkpoint's input is its card's" in text
    assert "--onnx and --torch models" in text


def test_export_torch_python_preprocessing():
    from bincam.core.preprocess import Preprocessing

    prep = Preprocessing((0.0, 255.0), MEAN, STD, "bgr")
    model = bincam.export_torch(tiny().eval(), SIZE, layer="2", preprocessing=prep,
                                fit="pad", checks=False)
    info = onnx_info(model, "model")
    assert (info.mean, info.std, info.channel_order, info.input_fit) == (MEAN, STD, "bgr", "pad")
    with pytest.raises(BincamError, match="--layout nhwc"):
        bincam.export_torch(tiny().eval(), SIZE, layer="2",
                            preprocessing=Preprocessing(layout="nhwc"))
