"""Interrupted runs leave nothing partial: ``bincam cam`` and ``bincam export`` get SIGINT or
SIGKILL at seeded random points of their run; afterwards OUT is absent or complete (never a
half-written folder or file), and a rerun succeeds and leaves no temporaries behind."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bincam.data.batches import synthetic_faces

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "models" / "synth-small-balanced"
ATTRIBUTES = "Bald,Bangs,Smiling"


def _start(args: list) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bincam", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _interrupt(args: list, delay: float, sig: int, watch: tuple[Path, str] | None = None) -> None:
    """Send ``sig`` ``delay`` seconds after the start, or, with ``watch=(folder, name)``,
    ``delay`` seconds after the command starts writing (``name`` or a temporary ``.name.*``
    appears in ``folder``)."""
    proc = _start(args)
    if watch is not None:
        folder, name = watch
        while proc.poll() is None and not any(p.name == name or p.name.startswith(f".{name}.")
                                              for p in folder.iterdir()):
            time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(sig)
    proc.communicate(timeout=120)


def _timed(args: list) -> float:
    start = time.perf_counter()
    proc = _start(args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-1500:]
    return time.perf_counter() - start


def _cam_complete(out: Path, inputs: list[Path]) -> None:
    """A whole cam output: the manifest lists every image, each with its pictures, and the
    arrays load with one row per image."""
    record = json.loads((out / "predictions.json").read_text())
    assert [r["file"] for r in record["images"]] == [str(p) for p in inputs]
    for r in record["images"]:
        for attr in ATTRIBUTES.split(","):
            assert (out / "overlays" / r["pictures"] / f"{attr}.png").is_file()
        assert (out / "grids" / f"{r['pictures']}.png").is_file()
    with np.load(out / "cams.npz") as z:
        assert z["logits"].shape == (len(inputs), 3)
    assert not [p for p in out.rglob(".*")], "temporary files inside OUT"


def _onnx_complete(path: Path) -> None:
    import onnx

    model = onnx.load(str(path))
    assert any(p.key.startswith("bincam") for p in model.metadata_props)


def _points(full: float, seed: int) -> list[tuple[float, bool]]:
    """Where to interrupt a run of ``full`` seconds: (delay, after writing started?) — a seeded
    random point while it loads and computes, and one soon after it starts writing."""
    rng = random.Random(seed)
    return [(rng.uniform(0.3, 0.6 * full), False), (rng.uniform(0.0, 0.05), True)]


def _leftovers(folder: Path, name: str) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("faces")
    paths = []
    for i, face in enumerate(synthetic_faces(8, 112, seed=4)):
        paths.append(folder / f"face{i:02d}.png")
        Image.fromarray(face).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def cam_seconds(tmp_path_factory):
    """How long an uninterrupted cam run takes (measured once, on its own output folder)."""
    seconds = {}

    def measure(args: list) -> float:
        if "cam" not in seconds:
            out = tmp_path_factory.mktemp("reference") / "out"
            seconds["cam"] = _timed(args[:args.index("--out")] + ["--out", out]
                                    + args[args.index("--out") + 2:])
        return seconds["cam"]
    return measure


@pytest.fixture(scope="module")
def export_seconds(tmp_path_factory) -> float:
    return _timed(["export", SMALL, "--out", tmp_path_factory.mktemp("reference") / "m.onnx"])


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_cam_interrupted_leaves_nothing_partial(tmp_path, faces, sig, cam_seconds):
    out = tmp_path / "out"
    args = ["cam", SMALL, faces[0].parent, "--out", out, "--attributes", ATTRIBUTES,
            "--batch-size", "1"]
    full = cam_seconds(args)
    for delay, writing in _points(full, int(sig)):
        if out.exists():
            shutil.rmtree(out)
        _interrupt(args, delay, sig, (tmp_path, "out") if writing else None)
        if out.exists():
            _cam_complete(out, faces)
        if sig == signal.SIGINT:
            assert not _leftovers(tmp_path, "out"), f"temporaries after SIGINT at {delay:.2f}s"
    assert _timed(args) > 0
    _cam_complete(out, faces)
    assert not _leftovers(tmp_path, "out")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_export_interrupted_leaves_nothing_partial(tmp_path, sig, export_seconds):
    out = tmp_path / "m.onnx"
    args = ["export", SMALL, "--out", out]
    full = export_seconds
    for delay, writing in _points(full, int(sig) + 100):
        out.unlink(missing_ok=True)
        _interrupt(args, delay, sig, (tmp_path, "m.onnx") if writing else None)
        if out.exists():
            _onnx_complete(out)
        if sig == signal.SIGINT:
            assert not _leftovers(tmp_path, "m.onnx"), f"temporaries after SIGINT at {delay:.2f}s"
    assert _timed(args) > 0
    _onnx_complete(out)
    assert not _leftovers(tmp_path, "m.onnx")
