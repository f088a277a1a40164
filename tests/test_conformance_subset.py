"""A fast subset of benchmarks/conformance_torchvision.py: torchvision classifiers exported by
torch's legacy exporter, their gradients appended by ``export_onnx_classifier`` and checked, then
compared with float64 torch autograd."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torchvision")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "conformance_torchvision.py"


def _script():
    spec = importlib.util.spec_from_file_location("conformance_torchvision", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows():
    conformance = _script()
    return {r["model"]: r for r in conformance.run_conformance(
        ["resnet18", "mobilenet_v2", "squeezenet1_0"], ["legacy"], size=64, threads=1,
        timing_runs=2, log=None)}


def test_no_silently_wrong_rows(rows):
    wrong = {name: r["grad_rel_err"] for name, r in rows.items() if r["silently_wrong"]}
    assert not wrong, f"checks passed but the gradients are wrong: {wrong}"


def test_resnet18_layer4_factored_and_exact(rows):
    r = rows["resnet18"]
    assert r["status"] == "ok", r["detail"]
    assert r["layout"] == "factored"
    assert r["torch_site"] == "layer4 (output)"
    assert r["grad_rel_err"] is not None and r["grad_rel_err"] <= 1e-5
    assert r["time_ratio"] > 0


def test_dense_row_is_compared(rows):
    r = rows["squeezenet1_0"]  # ReLU(Conv1x1) between the CAM tensor and the pool: dense VJP
    assert r["torch_site"] == "features (output)"
    if r["status"] == "ok":
        assert r["layout"] == "dense" and r["grad_rel_err"] <= 1e-5


def test_cam_tensor_rules():
    conformance = _script()
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4, 3, 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", 2])
    graph = helper.make_graph([
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("GlobalAveragePool", ["a"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["z"], transB=1)], "g", [x], [z],
        [helper.make_tensor("w", TensorProto.FLOAT, [2, 4], [0.0] * 8)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert conformance.cam_tensor(model, "resnet") == "a"
    assert conformance.cam_tensor(model, "densenet") == "x"  # stepped back over the ReLU
    with pytest.raises(LookupError, match="MaxPool"):
        conformance.cam_tensor(model, "vgg")
    assert isinstance(onnx.checker.check_model(model), type(None))
