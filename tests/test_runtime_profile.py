"""The runtime install profile (``pip install bincam``: no PyTorch) in a clean environment,
``.venv-runtime`` from ``scripts/runtime_setup.sh``: torch is absent, ``bincam cam`` and
``bincam analyze`` explain and audit an exported ONNX file, and a command that needs PyTorch says
which profile to install. Without that environment the test is skipped, except where
``BINCAM_REQUIRE_RUNTIME=1`` (CI): then it fails."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / ".venv-runtime" / "bin"


def _runtime(*args, cwd=None):
    return subprocess.run([str(RUNTIME / "bincam"), *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def runtime():
    if not (RUNTIME / "bincam").exists():
        message = "the runtime profile test needs .venv-runtime: run bash scripts/runtime_setup.sh"
        if os.environ.get("BINCAM_REQUIRE_RUNTIME") == "1":
            pytest.fail(message)
        pytest.skip(message)
    listed = subprocess.run([str(RUNTIME / "python"), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, timeout=300)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "bincam" in names and not names & {"torch", "torchvision", "safetensors"}, names
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from bincam.checkpoint import load_checkpoint
    from bincam.export.model import export_checkpoint, save_onnx

    folder = tmp_path_factory.mktemp("runtime")
    save_onnx(export_checkpoint(load_checkpoint(ROOT / "models" / "synth-small-balanced")),
              folder / "small.onnx")
    return folder


def test_runtime_profile_explains_and_audits_onnx(runtime, exported, synth_root):
    out = exported / "cams"
    faces = synth_root / "celeba" / "img_align_celeba"
    proc = _runtime("cam", exported / "small.onnx", faces, "--out", out, "--attributes",
                    "Smiling,Male")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "predictions.json").read_text())
    assert record["engine"] == "ort" and len(record["images"]) == 60
    audit = exported / "audit"
    proc = _runtime("analyze", "--model", f"small={exported / 'small.onnx'}", "--data",
                    f"synth:{synth_root}", "--out", audit, "--split", "all", "--batch-size", "20",
                    "--shard-size", "20")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "small" in (audit / "report.md").read_text()


def test_runtime_profile_names_the_full_profile(runtime, exported):
    proc = _runtime("export", ROOT / "models" / "synth-small-balanced", "--out",
                    exported / "again.onnx")
    line = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert line.startswith("error: this needs torch") and "pip install 'bincam[full]'" in line
    assert not (exported / "again.onnx").exists()


def test_runtime_profile_describes_an_exported_file(runtime, exported):
    """``bincam info MODEL.onnx`` needs no torch: what the file is, its input and its outputs."""
    proc = _runtime("info", exported / "small.onnx")
    assert proc.returncode == 0, proc.stderr[-1500:]
    rows = dict(line.split("\t", 1) for line in proc.stdout.splitlines())  # piped: tab rows
    assert rows["file"] == "gradient file: factored gradients of the layer4.pre_relu tensor"
    assert "logits float32 [batch, 40]" in rows["outputs"]
    assert "channel_weights float32 [40, 128]" in rows["outputs"]
    import onnx  # an output declared without a type is shown as such, not a traceback

    model = onnx.load(str(exported / "small.onnx"))
    model.graph.output.append(onnx.helper.make_value_info("untyped", onnx.TypeProto()))
    onnx.save(model, str(exported / "untyped.onnx"))
    proc = _runtime("info", exported / "untyped.onnx")
    assert proc.returncode == 0 and "untyped ? []" in proc.stdout, proc.stderr[-1500:]
