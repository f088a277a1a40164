"""Bad input to `bincam cam`: option ranges and output paths refused before any work, picture
names unique when stems collide, decompression bombs refused cleanly (and skipped with
--on-error skip)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bincam.data.batches import synthetic_faces
from bincam.errors import BincamError

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "models" / "synth-small-balanced"


def _bincam(*args):
    return subprocess.run([sys.executable, "-m", "bincam", *args], capture_output=True,
                          text=True, timeout=300)


def _one_error(proc, text):
    line = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert line.startswith("error:") and line.count("error:") == 1 and text in line, line


@pytest.fixture()
def faces(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, face in enumerate(synthetic_faces(2, 112, seed=1)):
        Image.fromarray(face).save(folder / f"f{i}.png")
    return folder


@pytest.mark.parametrize("args,text", [
    (["--batch-size", "0"], "--batch-size must be between 1 and 4096, got 0"),
    (["--batch-size", "-1"], "--batch-size must be between 1 and 4096, got -1"),
    (["--size", "0"], "--size must be between 8 and 4096 pixels, got 0"),
    (["--size", "-5"], "--size must be between 8 and 4096 pixels, got -5"),
])
def test_cam_option_ranges(tmp_path, faces, args, text):
    _one_error(_bincam("cam", str(SMALL), str(faces), "--out", str(tmp_path / "o"), *args), text)
    assert not (tmp_path / "o").exists()


def test_cam_out_must_be_a_folder(tmp_path, faces):
    file = tmp_path / "taken.txt"
    file.write_text("keep me")
    _one_error(_bincam("cam", str(SMALL), str(faces), "--out", str(file)), "is a file")
    _one_error(_bincam("cam", str(SMALL), str(faces), "--out", str(file / "sub")),
               "lies inside a file")
    assert file.read_text() == "keep me"


def test_colliding_stems_get_distinct_pictures(tmp_path):
    from bincam.cli.cam_cmd import unique_stems

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    face = synthetic_faces(3, 112, seed=2)
    Image.fromarray(face[0]).save(a / "face.png")
    Image.fromarray(face[1]).save(a / "face.jpg")
    Image.fromarray(face[2]).save(b / "face.png")
    paths = [a / "face.png", a / "face.jpg", b / "face.png"]
    assert list(unique_stems(paths).values()) == ["face.png", "face.jpg", "face.png-2"]
    out = tmp_path / "o"
    proc = _bincam("cam", str(SMALL), str(a), str(b), "--out", str(out), "--attributes", "Bald")
    assert proc.returncode == 0, proc.stderr[-1500:]
    grids = sorted(p.name for p in (out / "grids").iterdir())
    assert grids == ["face.jpg.png", "face.png-2.png", "face.png.png"]
    record = json.loads((out / "predictions.json").read_text())
    assert len({r["pictures"] for r in record["images"]}) == 3


def test_decompression_bombs_are_refused_and_skippable(tmp_path, monkeypatch):
    from bincam.data.celeba import load_aligned

    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels: over the limit
    with pytest.raises(BincamError, match="refused as a possible decompression bomb"):
        load_aligned(big, 112)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # between the warning and the error
    with pytest.raises(BincamError, match="decompression bomb"):
        load_aligned(big, 112)


def test_export_and_synth_out_paths_are_checked_first(tmp_path):
    folder = tmp_path / "existing"
    folder.mkdir()
    file = tmp_path / "taken.txt"
    file.write_text("keep me")
    _one_error(_bincam("export", str(SMALL), "--out", str(folder)), "is a folder; give a file")
    _one_error(_bincam("export", str(SMALL), "--out", str(file / "m.onnx")), "lies inside a file")
    _one_error(_bincam("data", "synth", "--out", str(file), "--n", "2"), "is a file")
    assert file.read_text() == "keep me" and not any(folder.iterdir())
    assert not list(tmp_path.glob("*.tmp*"))
