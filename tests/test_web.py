"""The explaining file in a browser: examples/web/ runs it with ONNX Runtime Web (WebAssembly) in
headless Chromium; its energies and logits must equal the Python ONNX Runtime run of the same
file and image, and the screenshot must show the overlays bincam itself would draw.

Needs Chromium, Node.js and ``npm ci`` in examples/web (``scripts/web_setup.sh``, which the
setup runs). Without them the test is skipped, except where ``BINCAM_REQUIRE_WEB=1`` (CI): then
it fails.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "examples" / "web"
CHROMIUM = os.environ.get("BINCAM_CHROMIUM", "/usr/bin/chromium")
ATTRIBUTES = ["Smiling", "Eyeglasses", "Bald", "Wearing_Hat"]


def _require_browser():
    missing = [what for what, ok in (("chromium", Path(CHROMIUM).exists()),
                                     ("node", shutil.which("node")),
                                     ("examples/web/node_modules",
                                      (WEB / "node_modules" / "onnxruntime-web").is_dir()))
               if not ok]
    if missing:
        message = f"browser test needs {', '.join(missing)}: run bash scripts/web_setup.sh"
        if os.environ.get("BINCAM_REQUIRE_WEB") == "1":
            pytest.fail(message)
        pytest.skip(message)


class _Handler(SimpleHTTPRequestHandler):
    """Static files of examples/web, and /data/ from the test's folder; module and wasm types."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm",
                      ".onnx": "application/octet-stream"}

    def __init__(self, *args, data: Path, **kwargs):
        self.data = data
        super().__init__(*args, directory=str(WEB), **kwargs)

    def translate_path(self, path):
        if path.startswith("/data/"):
            return str(self.data / path[len("/data/"):].split("?")[0])
        return super().translate_path(path)

    def log_message(self, *args):
        pass


@pytest.fixture()
def served(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, data=tmp_path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.slow
def test_page_matches_python_onnx_runtime(served):
    from bincam.checkpoint import load_checkpoint
    from bincam.core.overlay import overlay
    from bincam.data.batches import synthetic_faces
    from bincam.export.explain_graph import ExplainSpec
    from bincam.export.explaining import export_explaining
    from bincam.runtime import open_engine

    _require_browser()
    folder, base = served
    made = export_explaining(ExplainSpec(), load_checkpoint(ROOT / "models/synth-small-balanced"),
                             select=",".join(ATTRIBUTES))
    (folder / "model.onnx").write_bytes(made.model.SerializeToString())
    size = made.model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    face = synthetic_faces(1, size, seed=11)[0]
    Image.fromarray(face).save(folder / "face.png")
    with open_engine(folder / "model.onnx", "ort") as engine:
        expected = engine.explain(face.transpose(2, 0, 1)[None])
    (folder / "out").mkdir()
    run = subprocess.run(["node", str(WEB / "test" / "run.mjs"),
                          f"{base}/index.html?model=/data/model.onnx&image=/data/face.png",
                          str(folder / "out"), CHROMIUM], capture_output=True, text=True,
                         timeout=240, cwd=WEB)
    assert run.returncode == 0, run.stderr[-2000:]
    page = json.loads((folder / "out" / "result.json").read_text())
    assert page["attributes"] == ATTRIBUTES
    assert np.abs(np.array(page["logits"]) - expected.logits[0]).max() < 1e-4
    energy = np.array(page["energy"], dtype=np.float64)
    assert np.isfinite(energy).all()
    assert np.abs(energy - expected.proportional_energy()[0]).max() < 1e-4

    shot = np.asarray(Image.open(folder / "out" / "page.png").convert("RGB")).astype(np.int16)
    maps = expected.heatmaps()[0]
    for k, box in enumerate(page["overlays"]):
        x, y = round(box["x"]), round(box["y"])
        drawn = shot[y:y + size, x:x + size]
        ours = overlay(face, maps[k]).astype(np.int16)
        assert drawn.shape == ours.shape, box
        diff = np.abs(drawn - ours)
        assert np.median(diff) <= 1 and (diff > 8).mean() < 0.01, (box, diff.mean())
        # the overlay is there: far from the plain image
        assert np.abs(drawn - face.astype(np.int16)).mean() > 20


@pytest.mark.slow
@pytest.mark.parametrize("raw", [False, True], ids=["declared", "raw-pixels"])
def test_page_applies_the_files_preprocessing(served, raw):
    """A foreign BGR, NHWC, 0–255, mean/std classifier: the page feeds what the file's metadata
    declares (or, with --raw-pixels, the pixels themselves) and gets the logits of the model on
    the hand-preprocessed image."""
    from test_preprocess import IMAGENET_255, SIZE, by_hand, reference_logits, tiny_classifier

    from bincam.core.preprocess import Preprocessing
    from bincam.export.explain_graph import ExplainSpec
    from bincam.export.explaining import export_explaining
    from bincam.export.input_spec import raw_pixel_input

    _require_browser()
    folder, base = served
    source, activation = tiny_classifier(folder, "nhwc")
    prep = Preprocessing((0.0, 255.0), *IMAGENET_255, "bgr", "nhwc")
    made = export_explaining(ExplainSpec(), onnx_path=source, activation=activation,
                             logits="out", attributes=["neg", "pos"], preprocessing=prep,
                             fit="stretch")
    model = raw_pixel_input(made.model) if raw else made.model
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    pixels = np.random.default_rng(5).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels[0]).save(folder / "image.png")
    expected = reference_logits(source, by_hand(pixels, "bgr", "nhwc", 255.0, *IMAGENET_255))
    (folder / "out").mkdir()
    run = subprocess.run(["node", str(WEB / "test" / "run.mjs"),
                          f"{base}/index.html?model=/data/model.onnx&image=/data/image.png",
                          str(folder / "out"), CHROMIUM], capture_output=True, text=True,
                         timeout=240, cwd=WEB)
    assert run.returncode == 0, run.stderr[-2000:]
    page = json.loads((folder / "out" / "result.json").read_text())
    assert page["attributes"] == ["neg", "pos"]
    assert np.abs(np.array(page["logits"]) - expected[0]).max() <= 1e-5
