"""C-way softmax heads (``export/heads.py``, C > 2): each class a one-vs-rest binary decision
with log-odds ``d_c = z_c − logsumexp_{j≠c} z_j``, so ``σ(d_c)`` is the model's own softmax;
the head's nodes are stable at extremes (gaps of 1e3, ties, logits of 1e4), valid at opsets 13
and 18, and the raw maps equal autograd's ``sign(d_c)·∂d_c/∂A`` Grad-CAM (dense: ``d_c`` is not
affine). ``--target logit`` explains the class logit ``z_c`` instead (factored or dense; final
maps equal pytorch-grad-cam's ``ClassifierOutputTarget`` within 1e-5) while the probabilities
stay the softmax. Explaining files of a class subset, ``analyze`` (one row
per class; a 2-way softmax too), ``bincam cam`` and ``info``, and option errors."""

from __future__ import annotations

import csv
import io
import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from bincam.export.model import export_onnx_classifier, save_onnx
from cli_run import run_cli
from bincam.runtime import open_engine

SIZE, C = 16, 10


class Net(nn.Module):
    """Conv → ReLU (the CAM tensor) → [Conv → tanh → 8×8 pool → Linear] or [mean → Linear]."""

    def __init__(self, classes: int = C, affine: bool = False):
        super().__init__()
        self.affine = affine
        self.conv, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()  # a module: pytorch-grad-cam's target layer
        self.fc = nn.Linear(8 if affine else 32, classes)

    def features(self, x):
        return self.relu(self.conv(x))

    def head(self, a):
        if self.affine:
            return self.fc(a.mean((2, 3)))
        return self.fc(nn.functional.avg_pool2d(torch.tanh(self.conv2(a)), 8).flatten(1))

    def forward(self, x):
        return self.head(self.features(x))


def _export(net: nn.Module, path, opset: int = 18) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.rand(2, 3, SIZE, SIZE),), str(path), dynamo=False,
                          opset_version=opset, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return str(path)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("multiclass")
    out = {"folder": folder}
    for name, net in (("dense", Net()), ("affine", Net(affine=True)),
                      ("two", Net(classes=2, affine=True))):
        with torch.no_grad():  # logits of several units: some classes over 1/2, most not
            net.fc.weight.mul_(4.0 if net.affine else 40.0)
        out[name] = net.eval()
    out["dense13"] = _export(out["dense"], folder / "dense13.onnx", 13)
    out["dense18"] = _export(out["dense"], folder / "dense18.onnx", 18)
    out["affine.onnx"] = _export(out["affine"], folder / "affine.onnx", 17)
    out["two.onnx"] = _export(out["two"], folder / "two.onnx", 17)
    return out


def _cam_tensor(path) -> str:
    return next(n.output[0] for n in onnx.load(str(path)).graph.node if n.op_type == "Relu")


def _images(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


def _log_odds(z: torch.Tensor) -> torch.Tensor:
    """``d_c = z_c − logsumexp_{j≠c} z_j``, column by column (the definition, float64)."""
    c = z.shape[1]
    if c == 2:
        return z[:, 1:] - z[:, :1]
    return torch.stack([z[:, k] - torch.logsumexp(z[:, [j for j in range(c) if j != k]], 1)
                        for k in range(c)], 1)


def _reference(net: Net, x: np.ndarray, target: str = "log-odds", mode: str = "predicted"):
    """float64: class logits ``z``, log-odds ``d``, the softmax, and autograd's Grad-CAM raw maps
    of ``s·∂t/∂A`` for every decision (``t``: ``d`` or ``z``; ``s``: sign(d) or 1)."""
    net64 = Net(net.fc.out_features, net.affine).double().eval()
    net64.load_state_dict(net.state_dict())
    a = net64.features(torch.from_numpy(x).double()).detach().requires_grad_(True)
    z = net64.head(a)
    d = _log_odds(z)
    score = d if target == "log-odds" else z[:, [1]] if z.shape[1] == 2 else z
    sign = torch.sign(d) if mode == "predicted" else torch.ones_like(d)
    raws = []
    for k in range(score.shape[1]):
        (g,) = torch.autograd.grad(score[:, k].sum(), a, retain_graph=True)
        g = sign[:, k, None, None, None] * g
        raws.append((g.mean((2, 3), keepdim=True) * a).sum(1))
    soft = z.softmax(-1)
    return {"z": z.detach().numpy(), "d": d.detach().numpy(),
            "p": (soft[:, 1:] if z.shape[1] == 2 else soft).detach().numpy(),
            "raw": torch.stack(raws, 1).detach().numpy()}


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("opset", [13, 18])
def test_head_nodes_are_exact_and_stable_at_extremes(opset):
    """The one-vs-rest nodes alone on hard rows: ordinary, a gap of 1e3 (naive logsumexp
    overflows, a global-max shift underflows the rest), ties, equal rows, logits of 1e4."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from bincam.export.heads import one_vs_rest

    graph = helper.make_graph([], "head", [helper.make_tensor_value_info(
        "z", TensorProto.FLOAT, ["b", 4])], [])
    jacobian = one_vs_rest(graph, "z", "d", 4, opset)
    graph.output.extend([helper.make_tensor_value_info("d", TensorProto.FLOAT, ["b", 4]),
                         helper.make_tensor_value_info(jacobian, TensorProto.FLOAT,
                                                       ["b", 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    z = np.array([[0.3, -1.2, 2.0, 0.7], [1000.0, 0.0, -3.0, 1.0], [5.0, 5.0, 1.0, -2.0],
                  [0.0, 0.0, 0.0, 0.0], [1e4, 1e4 + 3, 1e4 - 1, 1e4 + 0.5],
                  [-80.0, -200.0, -90.0, -85.0]], np.float32)
    d, jac = ort.InferenceSession(model.SerializeToString()).run(None, {"z": z})
    z64 = torch.from_numpy(z).double().requires_grad_(True)
    want = _log_odds(z64)
    want_jac = torch.stack([torch.autograd.grad(want[:, k].sum(), z64, retain_graph=True)[0]
                            for k in range(4)], 1)
    assert np.isfinite(d).all() and np.isfinite(jac).all()
    scale = 1.0 + np.abs(z).max(axis=1, keepdims=True)  # float32 rounding of the inputs
    assert (np.abs(d - want.detach().numpy()) <= 1e-6 * scale).all()
    assert (np.abs(jac - want_jac.numpy()) <= 1e-6 * scale[:, None]).all()
    assert d[3] == pytest.approx(np.full(4, -np.log(3.0)), abs=1e-6)  # equal logits


@pytest.mark.parametrize("opset", [13, 18])
def test_one_vs_rest_logits_probabilities_and_maps(nets, opset):
    path = nets[f"dense{opset}"]
    model = export_onnx_classifier(path, _cam_tensor(path), "logits", head="softmax")
    onnx.checker.check_model(model, full_check=True)
    x = _images()
    ref = _reference(nets["dense"], x)
    with open_engine(model.SerializeToString(), "ort") as engine:
        info = engine.info
        assert info.head == "softmax" and info.gradient_layout == "dense"
        assert engine.attributes == [f"class{i}" for i in range(C)] == info.classes
        assert info.target == "log-odds" and info.positive_class is None
        result = engine.explain(x)
    assert np.abs(result.logits - ref["d"]).max() <= 1e-5
    assert np.abs(result.probabilities - ref["p"]).max() <= 1e-6
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, atol=1e-6)
    assert (ref["d"] > 0).any() and (ref["d"] < 0).any()  # both signs of the rule exercised
    assert _rel(result.raw, ref["raw"]) <= 1e-5


@pytest.mark.parametrize("gradients", ["factored", "dense"])
def test_target_logit_explains_the_class_logit(nets, gradients):
    """``--target logit``: maps of ``+∂z_c/∂A`` (mode positive: pytorch-grad-cam's
    ClassifierOutputTarget), factored where the head is affine; the logits stay ``d_c``."""
    path = nets["affine.onnx"]
    model = export_onnx_classifier(path, _cam_tensor(path), "logits", gradients=gradients,
                                   head="softmax", target="logit")
    x = _images(seed=2)
    ref = _reference(nets["affine"], x, "logit", "positive")
    with open_engine(model.SerializeToString(), "ort") as engine:
        assert engine.info.target == "logit" and engine.info.gradient_layout == gradients
        result = engine.explain(x, mode="positive")
    assert np.abs(result.probabilities - ref["p"]).max() <= 1e-6
    assert _rel(result.raw, ref["raw"]) <= 1e-5
    log_odds = _reference(nets["affine"], x, "log-odds", "positive")["raw"]
    assert _rel(log_odds, ref["raw"]) > 1e-2  # the two targets differ: not a vacuous check
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net64 = Net(affine=True).double().eval()
    net64.load_state_dict(nets["affine"].state_dict())
    with GradCAM(net64, [net64.relu]) as cam:
        theirs = np.stack([cam(torch.from_numpy(x).double(),
                               targets=[ClassifierOutputTarget(c)] * len(x)) for c in range(C)], 1)
    assert np.abs(result.heatmaps(SIZE) - theirs).max() <= 1e-5


def test_explaining_file_of_some_classes(nets):
    from bincam.export.explain_graph import ExplainSpec
    from bincam.export.explaining import export_explaining

    path = nets["dense18"]
    names = [f"c{i}" for i in range(C)]
    made = export_explaining(ExplainSpec(raw_maps=True), onnx_path=path, select="c3,c7",
                             activation=_cam_tensor(path), logits="logits", attributes=names,
                             head="softmax")
    x = _images(seed=4)
    ref = _reference(nets["dense"], x)
    with open_engine(made.model.SerializeToString(), "ort") as engine:
        assert engine.attributes == ["c3", "c7"] and engine.info.classes == names
        result = engine.explain(x)
    assert np.abs(result.probabilities - ref["p"][:, [3, 7]]).max() <= 1e-6
    assert _rel(result.raw, ref["raw"][:, [3, 7]]) <= 1e-5


def _dataset(folder, n: int = 8):
    """A CSV dataset of random images labelled class0..class9 (one-hot)."""
    rng = np.random.default_rng(5)
    (folder / "images").mkdir(parents=True)
    rows = [["path", *[f"class{i}" for i in range(C)], "split"]]
    pixels = []
    for i in range(n):
        image = (rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / f"{i}.png")
        pixels.append(image)
        rows.append([f"images/{i}.png", *[int(i % C == k) for k in range(C)],
                     "test" if i % 2 else "train"])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    (folder / "labels.csv").write_text(buf.getvalue())
    return np.stack(pixels).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def test_analyze_audits_class_by_class(nets, tmp_path):
    """One row per class of the 10-way softmax, and one (its positive class) of a 2-way one;
    the logits ``analyze`` stores are the log-odds, σ of them the model's softmax."""
    from bincam.analysis import AnalyzeOptions, analyze

    x = _dataset(tmp_path / "data")
    ten, two = tmp_path / "ten.onnx", tmp_path / "two.onnx"
    save_onnx(export_onnx_classifier(nets["dense18"], _cam_tensor(nets["dense18"]), "logits",
                                     head="softmax", fit="stretch"), ten)
    save_onnx(export_onnx_classifier(nets["two.onnx"], _cam_tensor(nets["two.onnx"]), "logits",
                                     ["class0", "class1"], head="softmax", fit="stretch"), two)
    for name, net, rows in (("ten", nets["dense"], [f"class{i}" for i in range(C)]),
                            ("two", nets["two"], ["class1"])):
        from bincam.analysis.store import read_shard

        out = tmp_path / f"audit_{name}"
        record = analyze(AnalyzeOptions([f"{name}={tmp_path / name}.onnx"],
                                        f"csv:{tmp_path / 'data'}", out, split="all",
                                        engine="ort", batch_size=4, shard_size=8, cues="off"))
        assert list(record["models"][name]["per_attribute"]) == rows
        shards = sorted((out / "shards" / name).glob("*.npz"))
        logits = np.concatenate([read_shard(s)["logits"] for s in shards]).astype(np.float64)
        ref = _reference(net, x)
        assert np.abs(logits - ref["d"]).max() <= 1e-5
        assert np.abs(1 / (1 + np.exp(-logits)) - ref["p"]).max() <= 1e-6


def test_analyze_compares_models_with_different_attributes(nets, tmp_path):
    """Two models whose attributes differ (a 10-way and a 2-way softmax) in one audit: each
    keeps its own rows and the report's figures are written (the plots read a missing attribute
    as no bar; they raised KeyError before)."""
    from bincam.analysis import AnalyzeOptions, analyze

    _dataset(tmp_path / "data")
    for name, path, names in (("ten", nets["dense18"], None),
                              ("two", nets["two.onnx"], ["class0", "class1"])):
        save_onnx(export_onnx_classifier(path, _cam_tensor(path), "logits", names,
                                         head="softmax", fit="stretch"), tmp_path / f"{name}.onnx")
    out = tmp_path / "audit"
    record = analyze(AnalyzeOptions([f"ten={tmp_path / 'ten.onnx'}", f"two={tmp_path / 'two.onnx'}"],
                                    f"csv:{tmp_path / 'data'}", out, split="all", engine="ort",
                                    batch_size=4, shard_size=8, cues="off"))
    assert list(record["models"]["ten"]["per_attribute"]) == [f"class{i}" for i in range(C)]
    assert list(record["models"]["two"]["per_attribute"]) == ["class1"]
    assert list(out.rglob("*.png")), "the report's figures were not written"


def _cli(*argv) -> tuple[int, str]:
    return run_cli(argv)


def test_cli_export_info_and_cam(nets, tmp_path):
    from bincam.core.model_info import read_model_info
    from bincam.data.fit import load_fitted

    out = tmp_path / "m.onnx"
    path = nets["dense18"]
    code, text = _cli("export", "--onnx", path, "--activation", _cam_tensor(path), "--logits",
                      "logits", "--head", "softmax", "--out", out)
    assert code == 0, text
    code, text = _cli("info", out)
    assert code == 0 and "softmax over 10 classes" in text and "one vs the rest" in text, text
    files = []
    rng = np.random.default_rng(8)
    for i in range(2):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)).save(files[-1])
    code, text = _cli("cam", out, *files, "--out", tmp_path / "cam", "--size", "32",
                      "--attributes", "class2,class5")
    assert code == 0, text
    record = json.loads((tmp_path / "cam" / "predictions.json").read_text())
    assert record["attributes"] == ["class2", "class5"] and record["target"] == "log-odds"
    fit = read_model_info(out).input_fit
    x = np.stack([load_fitted(f, SIZE, fit) for f in files]).transpose(0, 3, 1, 2) / 255.0
    ref = _reference(nets["dense"], x.astype(np.float32))
    got = np.array([r["probabilities"] for r in record["images"]])
    assert np.abs(got - ref["p"][:, [2, 5]]).max() <= 1e-6


@pytest.mark.parametrize("model, extra, message", [
    ("dense18", ("--head", "softmax", "--gradients", "factored"), "are not affine"),
    ("affine.onnx", ("--head", "softmax", "--gradients", "factored"), "are not affine"),
    ("dense18", ("--head", "softmax", "--positive-class", "3"), "is for a 2-way softmax"),
    ("dense18", ("--head", "softmax", "--attributes", "a,b"), "but 2 class names"),
    ("dense18", ("--head", "softmax", "--attributes", ",".join("aabcdefghi")), "distinct"),
    ("dense18", ("--head", "sigmoid", "--target", "logit"), "is for a softmax head"),
    ("dense18", ("--head", "softmax", "--target", "z"), "--target must be one of"),
])
def test_option_errors(nets, tmp_path, model, extra, message):
    out = tmp_path / "m.onnx"
    code, text = _cli("export", "--onnx", nets[model], "--activation",
                      _cam_tensor(nets[model]), "--logits", "logits", "--out", out, *extra)
    assert code == 2 and text.startswith("error:") and message in text, text
    assert list(tmp_path.iterdir()) == []


def test_target_is_for_onnx_classifiers(tmp_path):
    code, text = _cli("export", tmp_path / "checkpoint", "--target", "logit", "--out",
                      tmp_path / "m.onnx")
    assert code == 2 and text.startswith("error:") and "--target are for --onnx" in text, text
    assert list(tmp_path.iterdir()) == []
