"""Explaining files (``bincam export --explain``): the CAM methods, epilogue and PE inside the
graph, against bincam's core (float64 NumPy) on the file's own tensors, and through the engine
contract, the CLI and foreign classifiers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from bincam.checkpoint import load_checkpoint
from bincam.core.methods import METHODS
from bincam.core.modes import MODES
from bincam.errors import BincamError
from bincam.export.checks import structural_checks
from bincam.export.explain_checks import epilogue_parity, explain_checks
from bincam.export.explain_graph import ExplainSpec, append_explanation
from bincam.export.explain_masks import load_masks, region_masks
from bincam.export.explaining import export_explaining
from bincam.export.forward import export_module
from bincam.export.model import export_checkpoint
from bincam.runtime import open_engine

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "models" / "synth-small-balanced"
TARGETS = {"maps max abs": 1e-5, "PE max abs": 1e-6}
SUBSET = ["Smiling", "Eyeglasses", "Bald", "Wearing_Hat", "Male"]


@pytest.fixture(scope="module")
def small():
    return load_checkpoint(SMALL)


@pytest.fixture(scope="module", params=["layer4.pre_relu", "layer3"], ids=["factored", "dense"])
def gradient_graph(request, small):
    names = list(small.card.attributes)
    indices = [names.index(n) for n in SUBSET]
    from bincam.export.model import narrow_attributes

    graph = narrow_attributes(export_checkpoint(small, request.param, indices=indices), indices)
    return graph, region_masks(SUBSET, small.card.image_size)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_and_mode_matches_the_core(gradient_graph, method):
    graph, masks = gradient_graph
    for mode in MODES:
        model = append_explanation(graph, ExplainSpec(method, mode, raw_maps=True,
                                                      cam_precision="float64"), masks)
        figures = epilogue_parity(model, masks, batches=(1, 5), seed=list(MODES).index(mode))
        for name, target in TARGETS.items():
            assert figures[name] <= target, (mode, figures)
        # float32 (the default, TensorRT's): within the export checks' limits
        model32 = append_explanation(graph, ExplainSpec(method, mode), masks)
        assert all(c.ok for c in explain_checks(model32, masks, seed=3)), mode


def test_structure_outputs_and_metadata(gradient_graph):
    graph, masks = gradient_graph
    with pytest.raises(BincamError, match="are not 64×64"):
        append_explanation(graph, ExplainSpec(map_size=64), masks)
    masks = region_masks(SUBSET, 64)
    model = append_explanation(graph, ExplainSpec("layercam", "negative", map_size=64,
                                                  map_dtype="uint8", raw_maps=True), masks)
    checks = structural_checks(model, "trt")
    assert all(c.ok for c in checks), checks
    outputs = {o.name: o.type.tensor_type for o in model.graph.output}
    assert list(outputs) == ["logits", "heatmaps", "energy", "raw_maps"]
    assert outputs["heatmaps"].elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in outputs["heatmaps"].shape.dim]
    assert dims == ["batch", len(SUBSET), 64, 64]
    meta = {p.key: p.value for p in model.metadata_props}
    spec = json.loads(meta["bincam.explain"])
    assert json.loads(meta["bincam.attributes"]) == SUBSET
    assert (spec["method"], spec["mode"], spec["map_size"], spec["value_range"]) == \
        ("layercam", "negative", [64, 64], [0, 255])
    assert set(spec["outputs"]) == set(outputs) and spec["energy_attributes"] == SUBSET
    assert epilogue_parity(model, masks)["uint8 levels"] <= 1
    x = np.random.default_rng(4).random((2, 3, 112, 112), dtype=np.float32)
    with open_engine(model.SerializeToString(), "ort") as engine:
        got = engine.run(x)
    from bincam.core.epilogue import epilogue

    levels = np.floor(255 * epilogue(got["raw_maps"].astype(np.float64), 64) + 0.5)
    assert (got["heatmaps"] != levels).mean() < 1e-3

def test_subset_shrinks_the_dense_gradients(small):
    part = export_explaining(ExplainSpec(), small, select="Bald,Smiling", layer="layer3")
    grads = [o for o in part.gradient.graph.output if o.name == "gradients"][0]
    assert grads.type.tensor_type.shape.dim[1].dim_value == 2
    x = np.random.default_rng(0).random((2, 3, 112, 112), dtype=np.float32)
    with open_engine(part.model.SerializeToString(), "ort") as engine, \
            open_engine(small, "torch") as reference:
        ours = engine.explain(x)
        theirs = reference.explain(x, attributes=["Bald", "Smiling"])
        assert ours.attributes == ["Bald", "Smiling"]
        assert np.abs(ours.logits - theirs.logits).max() < 1e-4


def test_engine_contract_and_explanation(small, tmp_path):
    made = export_explaining(ExplainSpec("gradcam++"), small, select=",".join(SUBSET))
    path = tmp_path / "e.onnx"
    path.write_bytes(made.model.SerializeToString())
    x = np.random.default_rng(1).random((3, 3, 112, 112), dtype=np.float32)
    with open_engine(path) as engine:  # auto: ort for an ONNX file
        assert engine.kind == "ort" and engine.info.explain["method"] == "gradcam++"
        result = engine.explain(x, "gradcam++", attributes=["Bald", "Smiling"])
        assert result.raw is None and result.heatmaps().shape == (3, 2, 112, 112)
        assert result.heatmaps(56).shape == (3, 2, 56, 56)
        assert result.proportional_energy().shape == (3, 2)
        corrected = result.proportional_energy(corrected=True)
        from bincam.attributes import attribute_masks

        area = attribute_masks(["Bald", "Smiling"], 112).mean(axis=(1, 2))
        assert np.allclose(corrected, result.proportional_energy() * (1 - area), atol=1e-12)
        with pytest.raises(BincamError, match="computes gradcam\\+\\+ in mode predicted"):
            engine.explain(x, "gradcam")
        with pytest.raises(BincamError, match="at 112 px only"):
            result.proportional_energy(224)
        outputs = engine.run(x)
        assert set(outputs) == {"logits", "heatmaps", "energy"}
    reference = open_engine(small, "torch").explain(x, "gradcam++", attributes=["Bald",
                                                                                 "Smiling"])
    assert np.abs(result.heatmaps() - reference.heatmaps()).max() < 1e-3
    assert np.abs(result.proportional_energy() - reference.proportional_energy()).max() < 1e-4


def test_ties_and_zeros_give_empty_maps(tmp_path):
    """A logit that is exactly 0 with a nonzero gradient (a constant activation whose weighted
    sum cancels): s = 0, so in mode predicted its map is all zeros and its PE 0, in the file as in
    the core, while mode positive explains it (nonzero raw maps); no NaN anywhere."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([1.0, 2.0, 0.5, 1.0]))   # A constant and positive
        net[-1].weight[0] = torch.tensor([1.0, 1.0, -2.0, -2.0])  # z0 = 1 + 2 − 1 − 2 = 0
        net[-1].bias[0] = 0.0
    path = export_module(net, tmp_path / "tiny.onnx", 16)
    box = np.zeros((16, 16), bool)
    box[4:10, 2:12] = True
    np.savez(tmp_path / "masks.npz", a=box, b=box)
    x = np.random.default_rng(2).random((2, 3, 16, 16), dtype=np.float32)
    for gradients in ("factored", "dense"):
        for method in ("gradcam", "layercam", "gradcam-elementwise", "gradcam++"):
            outs = {}
            for mode in ("predicted", "positive"):
                made = export_explaining(ExplainSpec(method, mode, raw_maps=True), onnx_path=path,
                                         logits="logits", activation="/1/Relu_output_0",
                                         attributes=["a", "b", "c"], gradients=gradients,
                                         masks=tmp_path / "masks.npz")
                assert all(c.ok for c in explain_checks(made.model, made.masks, seed=1))
                with open_engine(made.model.SerializeToString(), "ort") as engine:
                    outs[mode] = engine.run(x)
            out = outs["predicted"]
            assert np.all(out["logits"][:, 0] == 0)
            assert np.all(out["raw_maps"][:, 0] == 0) and np.all(out["heatmaps"][:, 0] == 0)
            assert np.all(out["energy"][:, 0] == 0)
            if method != "gradcam":  # Grad-CAM's map of a constant activation is z itself: 0
                assert np.abs(outs["positive"]["raw_maps"][:, 0]).max() > 0, (gradients, method)
            assert np.isnan(out["energy"][:, 2]).all()     # "c" has no mask
            assert np.isfinite(out["heatmaps"]).all() and np.isfinite(out["energy"][:, :2]).all()


def test_nan_weights_give_nan_energy_not_an_empty_map(small):
    """A net with NaN weights: logits and PE are NaN (not 'empty map, PE 0')."""
    import copy

    broken = copy.deepcopy(small)
    with torch.no_grad():
        broken.fc.weight[list(small.card.attributes).index("Smiling"), 0] = float("nan")
    made = export_explaining(ExplainSpec(), broken, select="Smiling,Bald")
    with open_engine(made.model.SerializeToString(), "ort") as engine:
        out = engine.run(np.random.default_rng(0).random((1, 3, 112, 112), np.float32))
    assert np.isnan(out["logits"][:, 0]).all() and np.isnan(out["energy"][:, 0]).all()
    assert np.isfinite(out["energy"][:, 1]).all()


def test_map_size_and_name_clashes_are_refused(gradient_graph):
    graph, _ = gradient_graph
    with pytest.raises(BincamError, match="smaller than the CAM layer"):
        append_explanation(graph, ExplainSpec(map_size=3))
    clashing = onnx.ModelProto()
    clashing.CopyFrom(graph)
    clashing.graph.node[0].output[0] = "heatmaps"
    for node in clashing.graph.node[1:]:
        node.input[:] = ["heatmaps" if i == graph.graph.node[0].output[0] else i
                         for i in node.input]
    with pytest.raises(BincamError, match="already has tensor"):
        append_explanation(clashing, ExplainSpec())


def test_masks_files(tmp_path):
    from PIL import Image

    folder = tmp_path / "m"
    folder.mkdir()
    square = np.zeros((32, 32), np.uint8)
    square[8:16, 8:24] = 255
    Image.fromarray(square).save(folder / "a.png")
    np.save(folder / "b.npy", square > 0)
    masks = load_masks(folder, ["a", "b", "c"], 64)
    assert set(masks) == {"a", "b"} and masks["a"].shape == (64, 64)
    assert masks["a"].sum() == 4 * (square > 0).sum() and np.array_equal(masks["a"], masks["b"])
    with pytest.raises(BincamError, match="unknown attribute"):
        load_masks(folder, ["a"], 64)
    np.save(folder / "b.npy", np.zeros((32, 32)))
    with pytest.raises(BincamError, match="is empty"):
        load_masks(folder, ["a", "b"], 64)
    with pytest.raises(BincamError, match="give an .npz file or a folder"):
        load_masks(tmp_path / "nothing.txt", ["a"], 64)


def test_no_masks_means_no_energy_output(tmp_path):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2))
    path = export_module(net, tmp_path / "tiny.onnx", 16)
    made = export_explaining(ExplainSpec(), onnx_path=path, logits="logits",
                             activation="/1/Relu_output_0")
    assert [o.name for o in made.model.graph.output] == ["logits", "heatmaps"]
    with open_engine(made.model.SerializeToString(), "ort") as engine:
        result = engine.explain(np.random.default_rng(0).random((1, 3, 16, 16), np.float32))
    assert result.proportional_energy().shape == (1, 2)
    assert np.isnan(result.proportional_energy()).all()  # no masks: no PE, as for gradient files


def test_fp16_gradient_graph_keeps_a_float32_epilogue(small):
    pytest.importorskip("onnxconverter_common")
    made = export_explaining(ExplainSpec(map_dtype="float16"), small, select=",".join(SUBSET),
                             precision="fp16")
    heat = [o for o in made.model.graph.output if o.name == "heatmaps"][0]
    assert heat.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    explain_nodes = [n for n in made.model.graph.node if n.name.startswith("bincam/explain")]
    casts = [n for n in explain_nodes if n.op_type == "Cast"]
    targets = [a.i for n in casts for a in n.attribute]  # bool → float masks; one to fp16
    assert [t for t in targets if t != onnx.TensorProto.FLOAT] == [onnx.TensorProto.FLOAT16]
    assert all(c.ok for c in explain_checks(made.model, made.masks, seed=0))


def _bincam(*args):
    return subprocess.run([sys.executable, "-m", "bincam", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_cli_export_explain_then_cam(tmp_path):
    out = tmp_path / "explain.onnx"
    proc = _bincam("export", str(SMALL), "--out", str(out), "--explain", "--method", "hirescam",
                   "--explain-attributes", "Smiling,Bald", "--map-dtype", "uint8",
                   "--cam-precision", "float64")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    text = " ".join((proc.stdout + proc.stderr).split())
    assert "not for TensorRT" in text and "epilogue parity" in text
    from PIL import Image

    from bincam.data.batches import synthetic_faces

    images = tmp_path / "images"
    images.mkdir()
    for i, face in enumerate(synthetic_faces(2, 112, seed=4)):
        Image.fromarray(face).save(images / f"f{i}.png")
    proc = _bincam("cam", str(out), str(images), "--out", str(tmp_path / "cams"))  # its method
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp_path / "cams" / "cams.npz") as data:
        assert data["heatmaps"].shape == (2, 2, 112, 112) and "raw" not in data.files
    record = json.loads((tmp_path / "cams" / "predictions.json").read_text())
    assert record["attributes"] == ["Smiling", "Bald"]
    assert all(v is not None for r in record["images"] for v in r["proportional_energy"])
    assert record["method"] == "hirescam"
    wrong = _bincam("cam", str(out), str(images), "--out", str(tmp_path / "c2"), "--method",
                    "gradcam")
    assert wrong.returncode == 2 and "computes hirescam in mode predicted" in wrong.stderr
    assert not (tmp_path / "c2" / "predictions.json").exists()
    bench = _bincam("bench", str(out), "--engines", "ort")
    assert bench.returncode == 2 and "is an explaining file" in bench.stderr


def test_cli_refuses_bad_explain_options(tmp_path):
    proc = _bincam("export", str(SMALL), "--out", str(tmp_path / "x.onnx"), "--explain",
                   "--map-dtype", "int8")
    assert proc.returncode == 2 and "--map-dtype must be one of" in proc.stderr
    proc = _bincam("export", str(SMALL), "--out", str(tmp_path / "x.onnx"), "--explain",
                   "--explain-attributes", "Smiling,Nope")
    assert proc.returncode == 2 and "unknown attribute(s) Nope" in proc.stderr
    proc = _bincam("export", str(SMALL), "--out", str(tmp_path / "x.onnx"), "--map-size", "64")
    assert proc.returncode == 2 and "--map-size only applies with --explain" in proc.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_readme_snippet_runs_with_onnxruntime_alone(small, tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Explaining files"):]
    snippet = section[section.index("```python") + 9:]
    snippet = snippet[:snippet.index("```")]
    made = export_explaining(ExplainSpec(), small, select="Smiling,Bald")
    (tmp_path / "EXPLAIN.onnx").write_bytes(made.model.SerializeToString())
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    assert scope["heatmaps"].shape == (2, 2, 112, 112) and scope["energy"].shape == (2, 2)
    assert scope["spec"]["method"] == "gradcam"


def test_a_foreign_output_already_named_logits_is_renamed(tmp_path):
    """A classifier whose own output is called ``logits`` (here a Sigmoid) while ``--logits``
    names the Gemm before it: its tensor is renamed, nothing collides."""
    from bincam.export.model import export_onnx_classifier

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return torch.sigmoid(self.fc(self.features(x).mean((2, 3))))

    torch.manual_seed(0)
    net = Net().eval()
    path = export_module(net, tmp_path / "n.onnx", 16)
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    for gradients in ("auto", "dense"):
        model = export_onnx_classifier(path, "/features/features.1/Relu_output_0",
                                       "/fc/Gemm_output_0", gradients=gradients)
        onnx.checker.check_model(model, full_check=True)
        with open_engine(model.SerializeToString(), "ort") as engine:
            logits = engine.run_forward(x)
        with torch.no_grad():
            want = net.fc(net.features(torch.from_numpy(x)).mean((2, 3))).numpy()
        assert np.abs(logits - want).max() < 1e-5


@pytest.mark.parametrize("mask_positive", [False, True])
def test_graph_ops_equal_the_core_on_nan_zero_and_signed_inputs(mask_positive):
    """The graph's methods (``explain_ops.MethodGraph``, dense and factored) on ONNX Runtime
    against the core's ``raw_maps`` on the same tensors, with a NaN activation and logits that
    are 0, positive, negative and NaN: the same NaN pixels, the same values elsewhere."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from bincam.core.methods import factored_gradients, raw_maps
    from bincam.export.explain_ops import MethodGraph, OnnxBuilder

    rng = np.random.default_rng(21)
    a = rng.normal(size=(2, 5, 3, 4))
    a[0, 2, 1, 1] = np.nan
    sign = np.array([[0.0, 1.0, -1.0, np.nan], [1.0, 0.0, -1.0, 1.0]])
    w = rng.normal(size=(4, 5)) / 4
    fac = factored_gradients(a, sign, w, mask_positive)
    unsigned = factored_gradients(a, np.ones_like(sign), w, mask_positive).dense((3, 4))
    typed = lambda n, shape: helper.make_tensor_value_info(n, TensorProto.DOUBLE, shape)  # noqa: E731
    for layout in ("factored", "dense"):
        for method in METHODS:
            model = helper.make_model(helper.make_graph(
                [], "ops", [typed("a", [2, 5, 3, 4]), typed("s", [2, 4]),
                            typed("g", [2, 4, 5, 3, 4])], [],
                [numpy_helper.from_array(w, "w")]), opset_imports=[helper.make_opsetid("", 18)])
            ops = MethodGraph(OnnxBuilder(model), "a", "s", 4, (5, 3, 4), dtype=np.float64)
            maps = (ops.factored(method, "w", mask_positive) if layout == "factored"
                    else ops.dense(method, "g"))
            ops.b.output("maps", maps, TensorProto.DOUBLE, None)
            session = ort.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
            (got,) = session.run(["maps"], {"a": a, "s": sign, "g": unsigned})
            want = raw_maps(method, a, fac if layout == "factored" else fac.dense((3, 4)))
            assert (np.isnan(got) == np.isnan(want)).all(), (layout, method)
            ok = ~np.isnan(want)
            np.testing.assert_allclose(got[ok], want[ok], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{layout} {method}")
