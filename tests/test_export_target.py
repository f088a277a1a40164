"""``bincam export --runtime``: the TensorRT lint is a printed warning for an ONNX Runtime file
(the default, ``ort``) and a refusal naming node, reason and way out for ``trt`` / ``any``
(issue 27: timm's eca_nfnet_l0 was refused for TensorRT though the user wanted ONNX Runtime)."""

import subprocess
import sys

import onnx
import pytest
import torch
from torch import nn

from bincam.export.checks import run_checks
from bincam.export.forward import export_module
from bincam.export.model import export_onnx_classifier


class _ThroughDouble(nn.Module):
    """A classifier that rounds its input through float64 (a Cast to DOUBLE: ONNX Runtime runs
    it, TensorRT's parser is linted to refuse it)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x.double().float())).mean((2, 3)))


@pytest.fixture(scope="module")
def lint_failing(tmp_path_factory):
    torch.manual_seed(0)
    path = export_module(_ThroughDouble(), tmp_path_factory.mktemp("target") / "m.onnx", 12)
    tap = next(n.output[0] for n in onnx.load(path).graph.node if n.op_type == "Relu")
    return path, tap


def _bincam(*args):
    return subprocess.run([sys.executable, "-m", "bincam", *args], capture_output=True,
                          text=True, timeout=300)


def test_run_checks_warns_for_ort_and_refuses_for_trt(lint_failing):
    path, tap = lint_failing
    model = export_onnx_classifier(path, tap, "logits")
    ort = {c.name: c for c in run_checks(model)}
    lint = ort["TensorRT operator lint"]
    assert lint.ok and lint.warning and "Cast node" in lint.detail and "DOUBLE" in lint.detail
    assert all(c.ok for c in ort.values())
    for target in ("trt", "any"):
        lint = {c.name: c for c in run_checks(model, target=target)}["TensorRT operator lint"]
        assert not lint.ok and "Cast node" in lint.advice and "--runtime ort" in lint.advice


def test_cli_default_writes_with_a_warning_and_trt_refuses(lint_failing, tmp_path):
    path, tap = lint_failing
    out = tmp_path / "ort.onnx"
    ok = _bincam("export", "--onnx", path, "--activation", tap, "--logits", "logits",
                 "--out", str(out))
    assert ok.returncode == 0, ok.stderr[-1500:]
    assert out.is_file()
    warning = next(line for line in ok.stderr.splitlines() if line.startswith("warning:"))
    assert "TensorRT operator lint" in warning and "Cast node" in warning

    refused = tmp_path / "trt.onnx"
    proc = _bincam("export", "--onnx", path, "--activation", tap, "--logits", "logits",
                   "--out", str(refused), "--runtime", "trt")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    # the checks' table, then one error line (wrapped by the console, hence the join)
    line = " ".join(proc.stderr[proc.stderr.index("error:"):].split())
    assert proc.stderr.count("error:") == 1, proc.stderr
    assert "Cast node" in line and "DOUBLE" in line and "--runtime ort" in line, line
    assert not refused.exists() and list(tmp_path.iterdir()) == [out]

    bad = _bincam("export", "--onnx", path, "--activation", tap, "--logits", "logits",
                  "--out", str(tmp_path / "x.onnx"), "--runtime", "tensorrt")
    assert bad.returncode == 2 and "--runtime must be one of ort, trt, any" in bad.stderr
