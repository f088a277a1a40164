"""The package imports, and its NumPy parts run, without importing torch (serving runtime rule)."""

import subprocess
import sys

CODE = """
import sys
import numpy as np
import bincam
from bincam.attributes import attribute_masks
from bincam.heatmap import MaskEnergy, epilogue
from bincam.metrics import error_rates
from bincam.overlay import overlay
raw = np.random.default_rng(0).normal(size=(1, 2, 7, 7))
maps = epilogue(raw, 224)
pe = MaskEnergy(attribute_masks(["Male", "Smiling"]), (7, 7))(raw)
overlay(np.zeros((224, 224, 3), np.uint8), maps[0, 0])
import bincam.runtime.ort_engine, bincam.runtime.trt_engine, bincam.runtime.cuda_epilogue
from bincam.runtime.fused_reference import fused_epilogue_reference
ref = fused_epilogue_reference(raw, np.ones((1, 2, 2, 7, 7)),
                               np.array([[1.0, -1.0]]), (14, 14))
assert ref["maps"].shape == (1, 2, 14, 14)
assert "torch" not in sys.modules, "torch was imported"
print("ok", pe.shape)
"""


def test_numpy_parts_do_not_import_torch():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")
