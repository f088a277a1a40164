"""README's "Your own model" snippets run as written (random weights, no download): the Python
example explains a torchvision ResNet-50 through its weights' transforms (its maps equal
pytorch-grad-cam's), the ``export --torch`` factory and commands, and the 2-way softmax
``export --onnx … --head softmax`` commands (whose one decision reports the model's softmax).
Each snippet is found by its ``<!-- readme-test: NAME -->`` marker."""

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from cli_run import run_cli

ROOT = Path(__file__).resolve().parents[1]


def snippet(name: str) -> str:
    """The fenced block right after ``<!-- readme-test: NAME -->`` in README.md."""
    text = (ROOT / "README.md").read_text()
    marker = f"<!-- readme-test: {name} -->"
    assert text.count(marker) == 1, f"README.md needs exactly one {marker}"
    after = text.split(marker, 1)[1].lstrip("\n")
    assert after.startswith("```"), f"{marker} must be followed by a fenced block"
    return after.split("\n", 1)[1].split("\n```", 1)[0]


def commands(block: str) -> list[list[str]]:
    """The shell commands of a bash block (continuations joined, comments dropped)."""
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip()]


def run_block(name: str) -> None:
    for argv in commands(snippet(name)):
        assert argv[0] == "bincam", f"{name}: only bincam commands, got {argv[0]}"
        status, text = run_cli(argv[1:])
        assert status == 0, f"{shlex.join(argv)} → {text}"


def test_python_example_equals_gradcam():
    code = snippet("own-model-python")
    assert code.count("(weights=weights)") == 1  # the one line changed: random weights
    images = torch.from_numpy(np.random.default_rng(0).integers(
        0, 256, (2, 3, 240, 300), dtype=np.uint8))
    names = {"images": images}
    torch.manual_seed(3)  # random weights whose class 207 has evidence on these images
    exec(code.replace("(weights=weights)", "(weights=None)"), names)  # noqa: S102 - README
    maps, net, x = names["maps"], names["net"], names["x"]
    assert maps.shape == (2, 1, 224, 224) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0
    gradcam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with gradcam.GradCAM(net, [net.layer4]) as cam:
        expected = cam(x, targets=[ClassifierOutputTarget(207)] * len(x))
    assert np.abs(maps[:, 0] - expected).max() <= 1e-3  # float32 both (float64: 1e-5, bench)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    pixels = np.random.default_rng(1).integers(0, 256, (200, 260, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.jpg")
    return tmp_path


def test_export_torch_snippet(workdir):
    from bincam.core.model_info import load_onnx, onnx_info

    (workdir / "my_models.py").write_text(snippet("own-model-factory"))
    sys.modules.pop("my_models", None)  # another test's my_models must not stand in
    try:
        run_block("own-model-export")
    finally:
        sys.modules.pop("my_models", None)
    info = onnx_info(load_onnx(workdir / "attributes.onnx")[0], "attributes.onnx")
    assert info.attributes == ["glasses", "hat", "beard"] and info.target_layer == "layer4"
    np.testing.assert_allclose(info.mean, (0.485, 0.456, 0.406))
    np.testing.assert_allclose(info.std, (0.229, 0.224, 0.225))
    assert info.image_size == 224
    predictions = json.loads((workdir / "cams" / "predictions.json").read_text())
    assert predictions["attributes"] == ["glasses", "hat", "beard"]


def test_softmax_snippet_reports_the_models_softmax(workdir):
    import onnxruntime as ort

    from bincam.core.preprocess import model_input, preprocessing_of
    from bincam.runtime import open_engine

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2).eval()
    torch.onnx.export(net, (torch.rand(1, 3, 224, 224),), "cats-dogs.onnx",
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}}, dynamo=False)
    run_block("own-model-softmax")
    predictions = json.loads((workdir / "dog-cams" / "predictions.json").read_text())
    assert predictions["attributes"] == ["dog"] and predictions["head"] == "softmax"
    pixels = np.random.default_rng(2).integers(0, 256, (3, 3, 224, 224), dtype=np.uint8)
    with open_engine(workdir / "dog.onnx") as engine:
        d = engine.explain(pixels).logits[:, 0]
        x = model_input(pixels, preprocessing_of(engine.info), 224)
    session = ort.InferenceSession("cats-dogs.onnx", providers=["CPUExecutionProvider"])
    z = session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float64)
    softmax_dog = np.exp(z[:, 1]) / np.exp(z).sum(1)
    assert np.abs(1 / (1 + np.exp(-d)) - softmax_dog).max() <= 1e-6
