"""Head kinds (``export/heads.py``): a 2-way softmax classifier exported from torch is one binary
decision ``d = z_pos − z_neg``; its probability through the engine, ``bincam cam``, the serving
handler and an explaining file is the model's own softmax, and its raw maps are autograd's
``sign(d)·∂d/∂A`` Grad-CAM, factored and dense. Detection, tapping probabilities, and option
errors (one line, exit 2, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bincam.export.forward import export_module
from bincam.export.model import export_onnx_classifier, save_onnx
from cli_run import run_cli
from bincam.runtime import open_engine

SIZE = 16


class TwoWay(nn.Module):
    """Conv → ReLU (the CAM tensor) → mean → Linear(8, C) [→ softmax]."""

    def __init__(self, classes: int = 2, probabilities: bool = False):
        super().__init__()
        self.conv, self.fc, self.probabilities = nn.Conv2d(3, 8, 3, padding=1), \
            nn.Linear(8, classes), probabilities

    def features(self, x):
        return torch.relu(self.conv(x))

    def forward(self, x):
        z = self.fc(self.features(x).mean((2, 3)))
        return z.softmax(-1) if self.probabilities else z


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("heads")
    net = TwoWay().eval()
    with torch.no_grad():  # logits of a few units: probabilities away from 0 and 1
        net.fc.weight.mul_(4.0)
    probs = TwoWay(probabilities=True).eval()
    probs.load_state_dict(net.state_dict())
    one = TwoWay(classes=1).eval()
    return {"net": net, "logits": export_module(net, folder / "two.onnx", SIZE),
            "probs": export_module(probs, folder / "probs.onnx", SIZE),
            "one": export_module(one, folder / "one.onnx", SIZE), "folder": folder}


def _cam_tensor(path) -> str:
    import onnx

    return next(n.output[0] for n in onnx.load(str(path)).graph.node if n.op_type == "Relu")


def _images(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


def _reference(net: TwoWay, x: np.ndarray, positive: int = 1):
    """Softmax probability of the positive class, and autograd's Grad-CAM raw map of
    ``sign(d)·∂d/∂A`` with ``d = z_pos − z_neg`` (float64)."""
    net64 = TwoWay().double().eval()
    net64.load_state_dict(net.state_dict())
    xt = torch.from_numpy(x).double()
    a = net64.features(xt).detach().requires_grad_(True)
    z = net64.fc(a.mean((2, 3)))
    d = z[:, positive] - z[:, 1 - positive]
    (g,) = torch.autograd.grad(d.sum(), a)
    g = torch.sign(d)[:, None, None, None] * g
    raw = (g.mean((2, 3), keepdim=True) * a).sum(1)
    return z.softmax(-1)[:, positive].detach().numpy(), raw.detach().numpy()


@pytest.mark.parametrize("gradients", ["factored", "dense"])
@pytest.mark.parametrize("positive", [1, 0])
def test_two_way_softmax_is_one_decision(nets, gradients, positive, tmp_path):
    model = export_onnx_classifier(nets["logits"], _cam_tensor(nets["logits"]), "logits",
                                   ["cat", "dog"], gradients, head="softmax",
                                   positive_class=str(positive))
    path = save_onnx(model, tmp_path / "m.onnx")
    x = _images()
    prob, raw = _reference(nets["net"], x, positive)
    with open_engine(path, "ort") as engine:
        assert engine.info.head == "softmax" and engine.info.gradient_layout == gradients
        assert engine.attributes == [["cat", "dog"][positive]]
        assert engine.info.classes == ["cat", "dog"] and engine.info.positive_class == positive
        result = engine.explain(x)
    assert result.logits.shape == (4, 1)
    assert np.abs(result.probabilities[:, 0] - prob).max() <= 1e-6
    assert 0.05 < prob.min() or prob.max() < 0.95  # not a degenerate check
    rel = np.linalg.norm(result.raw[:, 0] - raw) / np.linalg.norm(raw)
    assert rel <= 1e-5


def test_sigmoid_head_would_have_been_wrong(nets):
    """Today's reading of the same file (two sigmoid attributes) is not the softmax: the test
    above measures something the old path got wrong."""
    model = export_onnx_classifier(nets["logits"], _cam_tensor(nets["logits"]), "logits",
                                   ["cat", "dog"], head="sigmoid")
    with open_engine(model.SerializeToString(), "ort") as engine:
        p = engine.explain(_images()).probabilities[:, 1]
    prob, _ = _reference(nets["net"], _images())
    assert np.abs(p - prob).max() > 1e-2


def test_probability_outputs_are_tapped_and_heads_detected(nets):
    from bincam.export.heads import resolve_head

    import onnx

    probs = onnx.load(nets["probs"])
    chosen = resolve_head(probs, "logits", "auto")  # the graph output is the Softmax's
    assert chosen.kind == "softmax" and chosen.logits != "logits" and "tapped" in chosen.note
    model = export_onnx_classifier(nets["probs"], _cam_tensor(nets["probs"]), "logits",
                                   ["cat", "dog"], head="auto")
    x = _images(seed=3)
    with open_engine(model.SerializeToString(), "ort") as engine:
        p = engine.explain(x).probabilities[:, 0]
    assert np.abs(p - _reference(nets["net"], x)[0]).max() <= 1e-6
    assert resolve_head(onnx.load(nets["logits"]), "logits", "auto").kind == "sigmoid"


def test_serve_handler_and_explaining_file_report_the_softmax(nets, tmp_path):
    from bincam.export.explain_graph import ExplainSpec
    from bincam.export.explaining import export_explaining
    from bincam.serve.handler import Handler, Request

    x = _images(seed=5)
    prob, raw = _reference(nets["net"], x)
    model = export_onnx_classifier(nets["logits"], _cam_tensor(nets["logits"]), "logits",
                                   ["cat", "dog"], head="softmax")
    with open_engine(model.SerializeToString(), "ort") as engine:
        out = Handler(engine).handle([Request({"images": x}, ["probabilities", "logits"])])[0]
    assert np.abs(out["probabilities"][:, 0] - prob).max() <= 1e-6
    made = export_explaining(ExplainSpec(raw_maps=True), onnx_path=nets["logits"],
                             activation=_cam_tensor(nets["logits"]), logits="logits",
                             attributes=["cat", "dog"], head="softmax")
    with open_engine(made.model.SerializeToString(), "ort") as engine:
        assert engine.info.head == "softmax" and engine.attributes == ["dog"]
        result = engine.explain(x)
    assert np.abs(result.probabilities[:, 0] - prob).max() <= 1e-6
    assert np.linalg.norm(result.raw[:, 0] - raw) / np.linalg.norm(raw) <= 1e-5


def _cli(*argv) -> tuple[int, str]:
    return run_cli(argv)


def test_cli_export_and_cam_report_the_softmax(nets, tmp_path):
    from bincam.core.model_info import read_model_info
    from bincam.data.fit import load_fitted

    out = tmp_path / "m.onnx"
    code, text = _cli("export", "--onnx", nets["probs"], "--activation",
                      _cam_tensor(nets["probs"]), "--logits", "logits", "--attributes",
                      "cat,dog", "--out", out)
    assert code == 0, text
    assert "head softmax" in text and "tapped the logits" in text
    rng = np.random.default_rng(7)
    files = []
    for i in range(3):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)).save(files[-1])
    code, text = _cli("cam", out, *files, "--out", tmp_path / "cam", "--size", "32")
    assert code == 0, text
    record = json.loads((tmp_path / "cam" / "predictions.json").read_text())
    assert record["attributes"] == ["dog"] and record["head"] == "softmax"
    fit = read_model_info(out).input_fit
    x = np.stack([load_fitted(f, SIZE, fit) for f in files]).transpose(0, 3, 1, 2) / 255.0
    prob, _ = _reference(nets["net"], x.astype(np.float32))
    got = np.array([r["probabilities"][0] for r in record["images"]])
    assert np.abs(got - prob).max() <= 1e-6
    code, text = _cli("info", out)
    assert code == 0 and "softmax over 2 classes" in text


@pytest.mark.parametrize("net, extra, message", [
    ("one", ("--head", "softmax"), "a softmax head needs ≥ 2 classes"),
    ("logits", ("--head", "softmax", "--positive-class", "2"), "is not 0, 1 or a class name"),
    ("logits", ("--head", "softmax", "--positive-class", "bird"), "is not 0, 1 or a class name"),
    ("logits", ("--head", "softmax", "--attributes", "a,b,c"), "makes 1 binary decision but 3"),
    ("logits", ("--head", "sigmoid", "--attributes", "a"), "2 logits but 1 attribute names"),
    ("logits", ("--head", "sigmoid", "--positive-class", "1"), "is for a 2-way softmax head"),
    ("logits", ("--head", "softmax2"), "--head must be one of"),
])
def test_head_option_errors(nets, tmp_path, net, extra, message):
    """Head options that cannot be right (``one``: a 1-logit model): one error, nothing written."""
    out = tmp_path / "m.onnx"
    code, text = _cli("export", "--onnx", nets[net], "--activation",
                      _cam_tensor(nets[net]), "--logits", "logits", "--out", out, *extra)
    assert code == 2 and text.startswith("error:") and message in text, text
    assert list(tmp_path.iterdir()) == []


def test_declared_head_must_fit_a_probability_output(nets, tmp_path):
    code, text = _cli("export", "--onnx", nets["probs"], "--activation",
                      _cam_tensor(nets["probs"]), "--logits", "logits", "--head", "sigmoid",
                      "--out", tmp_path / "m.onnx")
    assert code == 2 and "is the output of a Softmax" in text, text
