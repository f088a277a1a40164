"""``bincam cam``: outputs for good images, skip/fail on bad ones, nothing partial on failure."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from bincam.checkpoint import card_for, save_checkpoint
from bincam.nets import build_net


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_net("small", width=8).eval()
    folder = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(model, card_for(model, list(model_names()), 64), folder)


def model_names():
    from bincam.attributes import ATTRIBUTES
    return ATTRIBUTES


@pytest.fixture()
def inputs(tmp_path, synth_root):
    folder = tmp_path / "in"
    folder.mkdir()
    for src in sorted((synth_root / "celeba" / "img_align_celeba").iterdir())[:3]:
        shutil.copy(src, folder / src.name)
    (folder / "readme.txt").write_text("not an image")
    return folder


def run(*args):
    return subprocess.run([sys.executable, "-m", "bincam", "cam", *args], capture_output=True,
                          text=True, timeout=600)


def test_cam_writes_everything_and_skips_bad_files(tmp_path, checkpoint, inputs):
    out = tmp_path / "out"
    proc = run(str(checkpoint), str(inputs), "--out", str(out), "--attributes",
               "Eyeglasses,Male,Smiling", "--size", "96")
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stderr and "readme.txt" in proc.stderr
    summary = json.loads((out / "predictions.json").read_text())
    assert len(summary["images"]) == 3 and summary["attributes"] == ["Eyeglasses", "Male", "Smiling"]
    data = np.load(out / "cams.npz")
    assert data["raw"].shape == (3, 3, 4, 4) and data["logits"].shape == (3, 3)
    pe = np.array([r["proportional_energy"] for r in summary["images"]])
    assert np.allclose(pe, data["proportional_energy"]) and ((0 <= pe) & (pe <= 1)).all()
    assert len(list((out / "grids").glob("*.png"))) == 3
    assert len(list((out / "overlays").rglob("*.png"))) == 9
    assert not list(out.rglob(".*tmp*"))
    # --label writes the attribute and its prediction onto each single overlay; grids unchanged
    labelled = tmp_path / "labelled"
    proc = run(str(checkpoint), str(inputs), "--out", str(labelled), "--attributes",
               "Eyeglasses,Male,Smiling", "--size", "96", "--label")
    assert proc.returncode == 0, proc.stderr
    for plain in (out / "overlays").rglob("*.png"):
        assert (labelled / plain.relative_to(out)).read_bytes() != plain.read_bytes()
    for grid in (out / "grids").glob("*.png"):
        assert (labelled / "grids" / grid.name).read_bytes() == grid.read_bytes()


def test_overlay_labels_and_grid_titles():
    from io import BytesIO

    from PIL import Image

    from bincam.core.overlay import grid_figure, labelled, overlay, png_bytes

    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    picture = overlay(face, rng.random((96, 96)))
    text = labelled(picture, "Mouth_Slightly_Open: pos p=0.97")
    assert text.shape == picture.shape and text.dtype == np.uint8
    assert png_bytes(text) != png_bytes(picture)
    assert (text[:8] != picture[:8]).any() and (text[20:] == picture[20:]).all()  # a top band
    titles = [f"a{i}\npos p=0.50" for i in range(15)]
    plain = grid_figure(face, [picture] * 15, titles)
    titled = grid_figure(face, [picture] * 15, titles, title="model m · gradcam · mode predicted")
    assert titled != plain
    assert Image.open(BytesIO(titled)).height > Image.open(BytesIO(plain)).height


def test_cam_fail_mode_writes_nothing(tmp_path, checkpoint, inputs):
    out = tmp_path / "out"
    proc = run(str(checkpoint), str(inputs), "--out", str(out), "--on-error", "fail")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "readme.txt does not decode" in " ".join(proc.stderr.split())
    assert not out.exists()


def test_cam_rejects_bad_options(tmp_path, checkpoint, inputs):
    proc = run(str(checkpoint), str(inputs), "--out", str(tmp_path / "o"), "--method", "scorecam")
    assert proc.returncode == 2 and "unknown method 'scorecam'" in proc.stderr
    assert not (tmp_path / "o").exists()
