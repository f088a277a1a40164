"""fp16 gradient graphs (`bincam export --precision fp16`): types, checks, and their fidelity
against the float32 torch engine when ONNX Runtime runs them on this CPU."""

import subprocess
import sys

import numpy as np
import onnx
import pytest

from bincam.data.batches import synthetic_faces, to_batch
from bincam.checkpoint import load_checkpoint
from bincam.errors import BincamError
from bincam.export.checks import REDUCED_PRECISION_LIMITS, precision_fidelity, structural_checks
from bincam.export.model import export_checkpoint
from bincam.export.precision import op_types_by_precision, reduce_precision
from bincam.runtime.ort_engine import OrtEngine

MODEL = "models/synth-small-balanced"


@pytest.fixture(scope="module")
def model():
    return load_checkpoint(MODEL)


@pytest.mark.parametrize("layout", ["factored", "dense"])
def test_fp16_graph_types_checks_and_fidelity(model, layout):
    graph = reduce_precision(export_checkpoint(model, None, layout), "fp16")
    assert all(c.ok for c in structural_checks(graph, "trt")), structural_checks(graph, "trt")
    ops = op_types_by_precision(graph)
    assert "Conv" in ops["float16"] and "Gemm" in ops["float32"] and "Conv" not in ops["float32"]
    weights = {t.data_type for t in graph.graph.initializer if t.dims and len(t.dims) == 4}
    assert weights == {onnx.TensorProto.FLOAT16}  # conv weights stored in half precision
    for io in list(graph.graph.input) + list(graph.graph.output):
        assert io.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, io.name
    engine = OrtEngine(graph.SerializeToString())
    assert engine.info.precision == "fp16" and engine.info.gradient_layout == layout
    fid = precision_fidelity(engine, model, synthetic_faces(24, 112, seed=4))
    assert fid["raw-map Pearson (mean)"] >= REDUCED_PRECISION_LIMITS["raw-map Pearson (mean)"]
    assert fid["PE max abs"] <= REDUCED_PRECISION_LIMITS["PE max abs"]
    assert fid["prediction flip rate"] <= REDUCED_PRECISION_LIMITS["prediction flip rate"]
    assert 0 < fid["PE mean abs"] < 1e-3  # half precision does change the maps, a little


def test_fp16_keeps_the_factored_channel_weights_float32(model):
    """The factored head's channel weights are an output constant: they stay the float32 values
    of the source file (the converter alone gave float16 values, relative error ~5e-4), and the
    file holds no float16 copy of them."""
    import numpy as np

    source = export_checkpoint(model, None, "factored")
    graph = reduce_precision(source, "fp16")
    x = to_batch(synthetic_faces(2, 112, seed=1))
    want = OrtEngine(source.SerializeToString()).run(x)["channel_weights"]
    got = OrtEngine(graph.SerializeToString()).run(x)["channel_weights"]
    assert got.dtype == np.float32 and np.array_equal(got, want)
    producer = {o: n for n in graph.graph.node for o in n.output}
    source_name = producer["channel_weights"].input[0]
    (init,) = [t for t in graph.graph.initializer if t.name == source_name]
    assert init.data_type == onnx.TensorProto.FLOAT
    assert "bincam/channel_weights" not in {t.name for t in graph.graph.initializer}


@pytest.mark.parametrize("layout", ["factored", "dense"])
def test_fp16_half_outputs(model, layout):
    """``half_outputs``: activations and dense gradients are float16 outputs (no Cast back: half
    the bytes written and read by the fused kernel), logits and channel weights float32; ONNX
    Runtime runs the file with the fp16 fidelity limits."""
    graph = reduce_precision(export_checkpoint(model, None, layout), "fp16", half_outputs=True)
    assert all(c.ok for c in structural_checks(graph, "trt")), structural_checks(graph, "trt")
    types = {o.name: o.type.tensor_type.elem_type for o in graph.graph.output}
    half, single = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert types == ({"logits": single, "activations": half, "gradients": half}
                     if layout == "dense" else
                     {"logits": single, "activations": half, "channel_weights": single})
    assert not any(n.op_type == "Cast" and n.output[0] in ("activations", "gradients")
                   for n in graph.graph.node)
    engine = OrtEngine(graph.SerializeToString())
    out = engine.run(to_batch(synthetic_faces(2, 112, seed=5)))
    assert {v.dtype for v in out.values()} == {np.dtype(np.float32)}  # widened, as TensorRT's
    fid = precision_fidelity(engine, model, synthetic_faces(24, 112, seed=4))
    assert fid["PE max abs"] <= REDUCED_PRECISION_LIMITS["PE max abs"]
    assert fid["prediction flip rate"] <= REDUCED_PRECISION_LIMITS["prediction flip rate"]


def test_precision_choices(model):
    graph = export_checkpoint(model)
    assert reduce_precision(graph, "fp32") is graph
    with pytest.raises(BincamError, match="ModelOpt AutoCast"):
        reduce_precision(graph, "bf16")
    with pytest.raises(BincamError, match="--precision must be one of fp32, fp16"):
        reduce_precision(graph, "int8")


def test_export_command_fp16(tmp_path):
    out = tmp_path / "m16.onnx"
    proc = subprocess.run([sys.executable, "-m", "bincam", "export", MODEL, "--out", str(out),
                           "--precision", "fp16"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stderr.split())
    assert "fp16 fidelity: PE max abs" in text and "FAILED" not in text
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["bincam.precision"] == "fp16"
    bad = subprocess.run([sys.executable, "-m", "bincam", "export", MODEL, "--out",
                          str(tmp_path / "x.onnx"), "--precision", "bf16"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "ModelOpt AutoCast" in bad.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_export_command_half_outputs_runs_cam_on_onnx_runtime(tmp_path):
    """``bincam export --precision fp16 --half-outputs``: float16 activations, float32 logits and
    channel weights in the file, and ``bincam cam`` on it (ONNX Runtime) gives the maps of the
    float32 torch model within the fp16 limits."""
    from bincam.data.synth import synthesize

    out, faces = tmp_path / "h16.onnx", tmp_path / "faces"
    synthesize(faces, 4, seed=9)
    images = faces / "celeba" / "img_align_celeba"
    run = lambda *a: subprocess.run([sys.executable, "-m", "bincam", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, timeout=600)
    proc = run("export", MODEL, "--out", out, "--precision", "fp16", "--half-outputs")
    assert proc.returncode == 0 and "FAILED" not in proc.stdout + proc.stderr, proc.stderr
    assert "float16 outputs: activations" in proc.stderr
    graph = onnx.load(str(out))
    types = {o.name: o.type.tensor_type.elem_type for o in graph.graph.output}
    assert types == {"logits": onnx.TensorProto.FLOAT, "activations": onnx.TensorProto.FLOAT16,
                     "channel_weights": onnx.TensorProto.FLOAT}
    for engine_file, folder in ((out, "ort"), (MODEL, "torch")):
        proc = run("cam", engine_file, images, "--out", tmp_path / folder, "--attributes", "0,1,2")
        assert proc.returncode == 0, proc.stderr
    half, single = (np.load(tmp_path / f / "cams.npz") for f in ("ort", "torch"))
    pe = np.abs(half["proportional_energy"] - single["proportional_energy"]).max()
    assert pe <= REDUCED_PRECISION_LIMITS["PE max abs"], pe
