"""The whole core package, the engine contract and the ORT engine import and run without torch
(the serving runtime's rule)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CODE = """
import importlib, pkgutil, sys
import numpy as np
import bincam, bincam.core
for info in pkgutil.iter_modules(bincam.core.__path__, "bincam.core."):
    importlib.import_module(info.name)
from bincam.attributes import attribute_masks
from bincam.core.energy import MaskEnergy
from bincam.core.epilogue import epilogue
from bincam.core.metrics import error_rates
from bincam.core.overlay import overlay
raw = np.random.default_rng(0).normal(size=(1, 2, 7, 7))
maps = epilogue(raw, 224)
pe = MaskEnergy(attribute_masks(["Male", "Smiling"]), (7, 7))(raw)
picture = overlay(np.zeros((224, 224, 3), np.uint8), maps[0, 0])
from bincam.core.overlay import grid_figure, labelled
grid_figure(picture, [labelled(picture, "Male: pos p=0.90")], ["Male"], title="m · gradcam")
import bincam.files, bincam.runtime.ort_engine, bincam.runtime.trt_engine, bincam.runtime.trt_plan
import bincam.gpu, bincam.gpu.launcher
from bincam.gpu.reference import fused_epilogue_reference
ref = fused_epilogue_reference(raw, np.ones((1, 2, 2, 7, 7)),
                               np.array([[1.0, -1.0]]), (14, 14))
assert ref["maps"].shape == (1, 2, 14, 14)
from bincam.runtime import open_engine
with open_engine(sys.argv[1]) as engine:
    assert engine.kind == "ort"
    x = np.full((2, 3, 112, 112), 120, np.uint8)
    for method in ("gradcam", "gradcam++"):
        result = engine.explain(x, method, attributes=["Male", "Smiling"])
        assert result.heatmaps().shape == (2, 2, 112, 112)
        assert result.proportional_energy().shape == (2, 2)
    assert engine.run_forward(x).shape == (2, 40)
assert "torch" not in sys.modules, "torch was imported"
print("ok", pe.shape)
"""


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    from bincam.checkpoint import load_checkpoint
    from bincam.export.model import export_checkpoint, save_onnx

    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    return save_onnx(export_checkpoint(load_checkpoint(ROOT / "models/synth-small-balanced")),
                     path)


def test_core_and_ort_engine_run_without_torch(onnx_file):
    proc = subprocess.run([sys.executable, "-c", CODE, str(onnx_file)], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")
