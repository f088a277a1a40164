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


def test_analysis_folder_is_locked(tmp_path, synth_root):
    """A second analyze on an OUT in use is refused at once, and touches nothing there."""
    import fcntl
    import os

    out = tmp_path / "audit"
    out.mkdir()
    fd = os.open(out / ".bincam-analyze.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        before = sorted(p.name for p in out.iterdir())
        proc = _bincam("analyze", "--model", f"m={SMALL}", "--data", f"synth:{synth_root}",
                       "--out", str(out), "--limit", "4", "--batch-size", "4",
                       "--shard-size", "4")
        _one_error(proc, "is in use by another bincam analyze (pid 4242)")
        assert sorted(p.name for p in out.iterdir()) == before
    finally:
        os.close(fd)


def test_cam_replaces_its_own_output_only(tmp_path, faces):
    out = tmp_path / "o"
    args = ("cam", str(SMALL), str(faces), "--out", str(out), "--attributes", "Bald")
    assert _bincam(*args).returncode == 0
    first = json.loads((out / "predictions.json").read_text())
    (out / "grids" / "stale.png").write_bytes(b"from an earlier run")
    assert _bincam(*args).returncode == 0, "an earlier cam output is replaced"
    assert not (out / "grids" / "stale.png").exists()
    assert json.loads((out / "predictions.json").read_text())["images"] == first["images"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file")
    _one_error(_bincam("cam", str(SMALL), str(faces), "--out", str(mine)),
               "is a folder with other files in it (no predictions.json)")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    """What a killed writer left (``.NAME.PID-TID.*``) goes at the next write; a live writer's
    temporaries stay."""
    import os

    from bincam.files import _host, atomic_folder, write_atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    host = _host()
    stale = tmp_path / f".m.onnx.{host}-{dead}-1.tmp.onnx"
    live = tmp_path / f".m.onnx.{host}-{os.getpid()}-7.tmp.onnx"
    other_host = tmp_path / f".m.onnx.{'0' * 8 if host != '0' * 8 else '1' * 8}-{dead}-1.tmp.onnx"
    sibling = tmp_path / f".m.onnx.{host}-{dead}-1.tmp.onnx.keep"  # not a temporary's name
    folder = tmp_path / f".m.onnx.{host}-{dead}-2.partial"
    for path in (stale, live, other_host):
        path.write_bytes(b"half")
    folder.mkdir()
    sibling.mkdir()
    write_atomic(tmp_path / "m.onnx", b"whole")
    assert (tmp_path / "m.onnx").read_bytes() == b"whole"
    assert not stale.exists() and not folder.exists()
    assert live.exists() and other_host.exists() and sibling.exists()
    # killed between a folder's two renames: OUT is missing, its previous version is .old
    old = tmp_path / f".out.{host}-{dead}-3.old"
    old.mkdir()
    (old / "predictions.json").write_text("the previous output")
    half = tmp_path / f".out.{host}-{dead}-3.partial"
    half.mkdir()
    from bincam.files import remove_stale

    remove_stale(tmp_path / "out")
    assert (tmp_path / "out" / "predictions.json").read_text() == "the previous output"
    assert not old.exists() and not half.exists()
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "predictions.json").write_text("new")
    assert (tmp_path / "out" / "predictions.json").read_text() == "new"


def test_served_requests_with_nonfinite_logits_get_errors():
    from bincam.serve.handler import _drop_nonfinite

    logits = np.array([[0.5], [np.nan], [1.0], [2.0], [np.inf]], np.float32)
    items = [(0, np.zeros((1, 3, 8, 8))), (1, np.zeros((2, 3, 8, 8))),
             (2, np.zeros((1, 3, 8, 8))), (3, np.zeros((1, 3, 8, 8)))]
    results = [None] * 4
    kept, out = _drop_nonfinite(items, {"logits": logits, "energy": logits * 2}, results)
    assert [i for i, _ in kept] == [0, 2]
    assert out["logits"].tolist() == [[0.5], [2.0]] and out["energy"].tolist() == [[1.0], [4.0]]
    assert isinstance(results[1], BincamError) and isinstance(results[3], BincamError)
    assert "NaN or Inf for 1 of 2 image(s) (image 0)" in str(results[1])
