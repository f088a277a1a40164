"""A foreign classifier's own preprocessing, declared at export (``--pixel-range``, ``--mean``,
``--std``, ``--channel-order``, ``--layout``, ``--raw-pixels``, ``--preprocess``), gives the
logits of the model run on arrays the user preprocessed by hand: through ``bincam cam`` on PNG
files and through the serving handler (pixels and encoded files). Impossible combinations are
one clear error with nothing written."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from bad_corpus import Case, run_case

SIZE = 32
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGENET_255 = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


def tiny_classifier(folder: Path, layout: str, inputs: int | None = None,
                    dynamic: bool = False) -> tuple[Path, str]:
    """A 2-logit conv net taking ``layout`` images (or ``inputs`` features; ``dynamic``: of any
    size), exported with torch.onnx; the file and its CAM tensor (the last Relu)."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 6, 3, padding=1)
            self.c2 = torch.nn.Conv2d(6, 8, 3, padding=1, stride=2)
            self.fc = torch.nn.Linear(8, 2)
            self.flat = torch.nn.Linear(inputs or 1, 2)

        def forward(self, x):
            if inputs:
                return self.flat(torch.relu(x))
            if layout == "nhwc":
                x = x.permute(0, 3, 1, 2)
            return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))

    torch.manual_seed(0)
    net = Tiny().eval()
    with torch.no_grad():  # a bias that matters: the logits differ clearly between inputs
        net.fc.weight.mul_(10)
    shape = (2, inputs) if inputs else (2, SIZE, SIZE, 3) if layout == "nhwc" else (2, 3, SIZE, SIZE)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(*shape),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["out"],
                          dynamic_axes={"x": {0: "b", 2: "h", 3: "w"} if dynamic else {0: "b"},
                                        "out": {0: "b"}})
    path = folder / f"tiny-{layout}{'-flat' if inputs else ''}{'-any' if dynamic else ''}.onnx"
    path.write_bytes(buf.getvalue())
    model = onnx.load_from_string(buf.getvalue())
    relus = [n.output[0] for n in model.graph.node if n.op_type == "Relu"]
    return path, relus[-1]


def by_hand(pixels: np.ndarray, order: str, layout: str, scale: float, mean, std) -> np.ndarray:
    """The user's own preprocessing of uint8 ``[N, H, W, 3]`` RGB images, written out."""
    x = pixels.astype(np.float64) * (scale / 255.0)
    if order == "bgr":
        x = x[..., [2, 1, 0]]
    x = (x - np.asarray(mean)) / np.asarray(std)
    if layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return x.astype(np.float32)


def reference_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0].astype(np.float64)


def bincam(*argv: str) -> None:
    """``bincam ARGV`` in this process; it must succeed."""
    import sys
    from contextlib import redirect_stdout

    from bincam.cli.app import main

    saved, sys.argv, code = sys.argv, ["bincam", *argv], 0
    try:
        with redirect_stdout(io.StringIO()) as out:
            main()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = saved
    assert code in (0, None), out.getvalue()[-2000:]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    pixels[2] = np.array([250, 10, 128], np.uint8)  # saturated channels: order matters
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(folder / f"im{i}.png")
    return folder, pixels


COMBOS = [  # order, layout, pixel range, mean, std, --raw-pixels
    ("rgb", "nchw", "1", *IMAGENET, False),
    ("bgr", "nhwc", "255", *IMAGENET_255, False),
    ("rgb", "nhwc", "255", (127.5,) * 3, (127.5,) * 3, False),
    ("bgr", "nchw", "1", *IMAGENET, False),
    ("bgr", "nchw", "255", *IMAGENET_255, True),
    ("rgb", "nhwc", "1", *IMAGENET, True),
]


@pytest.mark.parametrize("order, layout, scale, mean, std, raw", COMBOS)
def test_cam_and_serve_give_the_logits_of_hand_preprocessed_arrays(
        tmp_path, images, order, layout, scale, mean, std, raw):
    from bincam.core.model_info import read_model_info
    from bincam.runtime import open_engine
    from bincam.serve.handler import Handler, Request

    folder, pixels = images
    source, activation = tiny_classifier(tmp_path, layout)
    out = tmp_path / "model.onnx"
    bincam("export", "--onnx", str(source), "--activation", activation, "--logits", "out",
           "--out", str(out), "--attributes", "neg,pos", "--pixel-range", scale,
           "--mean", ",".join(map(str, mean)), "--std", ",".join(map(str, std)),
           "--channel-order", order, "--layout", layout, "--fit", "stretch",
           *(["--raw-pixels"] if raw else []))
    info = read_model_info(out)
    assert (info.channel_order, info.layout, info.raw_pixels, info.input_fit) == \
        (order, layout, raw, "stretch")
    assert info.mean == pytest.approx(mean) and info.std == pytest.approx(std)
    expected = reference_logits(source, by_hand(pixels, order, layout, float(scale), mean, std))
    wrong = reference_logits(source, by_hand(pixels, "rgb", layout, 1.0, (0,) * 3, (1,) * 3))
    assert np.abs(wrong - expected).max() > 1e-2  # the declaration matters for this model

    bincam("cam", str(out), str(folder), "--out", str(tmp_path / "cam"), "--engine", "ort",
           "--size", "32")
    records = json.loads((tmp_path / "cam" / "predictions.json").read_text())["images"]
    got = np.array([r["logits"] for r in sorted(records, key=lambda r: r["file"])])
    assert np.abs(got - expected).max() <= 1e-5
    saved = np.load(tmp_path / "cam" / "cams.npz")
    assert np.abs(saved["logits"] - expected).max() <= 1e-5

    encoded = []
    for p in pixels:
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="PNG")
        encoded.append([buf.getvalue()])
    with open_engine(out, "ort") as engine:
        answers = Handler(engine).handle([
            Request({"pixels": pixels}, ["logits"]),
            Request({"encoded": np.array(encoded, dtype=object)}, ["logits", "energy"]),
            Request({"images": pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255},
                    ["logits"])])
    for answer in answers:
        assert not isinstance(answer, Exception), answer
        assert np.abs(answer["logits"] - expected).max() <= 1e-5


def test_raw_pixels_file_takes_uint8_pixels(tmp_path):
    from bincam.export.input_spec import raw_pixel_input
    from bincam.export.model import export_onnx_classifier
    from bincam.core.preprocess import Preprocessing

    source, activation = tiny_classifier(tmp_path, "nchw")
    prep = Preprocessing((0.0, 255.0), IMAGENET_255[0], IMAGENET_255[1], "bgr", "nchw")
    raw = raw_pixel_input(export_onnx_classifier(source, activation, "out", preprocessing=prep))
    (pixels,) = [i for i in raw.graph.input]
    dims = [d.dim_value or d.dim_param for d in pixels.type.tensor_type.shape.dim]
    assert pixels.name == "pixels" and dims[1:] == [SIZE, SIZE, 3]
    assert pixels.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    meta = {p.key: p.value for p in raw.metadata_props}
    assert meta["bincam.raw_pixels"] == "true" and meta["Image.BitmapPixelFormat"] == "Rgb8"
    import onnxruntime as ort

    u8 = np.random.default_rng(3).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    got = ort.InferenceSession(raw.SerializeToString()).run(["logits"], {"pixels": u8})[0]
    expected = reference_logits(source, by_hand(u8, "bgr", "nchw", 255.0, *IMAGENET_255))
    assert np.abs(got - expected).max() <= 1e-5


def test_preprocess_sources(tmp_path):
    from bincam.export.preprocess_sources import declared_input

    config = tmp_path / "preprocessor_config.json"
    config.write_text(json.dumps({"do_normalize": True, "do_rescale": True,
                                  "rescale_factor": 1 / 255, "image_mean": [0.5, 0.5, 0.5],
                                  "image_std": [0.5, 0.5, 0.5], "size": {"height": 224,
                                                                         "width": 224},
                                  "resample": 2}))
    hf = declared_input(str(config))
    assert hf.preprocessing.mean == (0.5,) * 3 and hf.preprocessing.pixel_range == (0, 1)
    assert (hf.size, hf.fit, hf.notes) == (224, "stretch", [])
    config.write_text(json.dumps({"do_normalize": False, "do_rescale": False, "size": 64,
                                  "crop_size": 56, "do_center_crop": True}))
    raw = declared_input(str(config), channel_order="bgr")
    assert raw.preprocessing.pixel_range == (0, 255) and raw.preprocessing.mean == (0.0,) * 3
    assert (raw.size, raw.fit, raw.preprocessing.channel_order) == (56, "crop", "bgr")
    timm = declared_input("timm:resnet18.a1_in1k")
    assert timm.preprocessing.mean == pytest.approx(IMAGENET[0])
    assert timm.preprocessing.std == pytest.approx(IMAGENET[1]) and timm.fit == "crop"
    assert timm.size == 224 and any("crop" in n for n in timm.notes)  # crop_pct 0.95, said
    tv = declared_input("torchvision:ResNet18_Weights.IMAGENET1K_V1")
    assert tv.preprocessing.mean == pytest.approx(IMAGENET[0]) and tv.size == 224


def test_a_sources_size_fixes_only_a_dynamic_input(tmp_path):
    from bincam.core.model_info import onnx_info
    from bincam.export.model import export_onnx_classifier
    from bincam.export.preprocess_sources import declared_input

    config = tmp_path / "preprocessor_config.json"
    config.write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": 24}))
    source = declared_input(str(config))
    fixed, activation = tiny_classifier(tmp_path, "nchw")
    info = onnx_info(export_onnx_classifier(fixed, activation, "out", **source.input_options()),
                     "m")
    assert info.image_size == SIZE and info.mean == (0.5,) * 3  # the file's own size wins
    dynamic, activation = tiny_classifier(tmp_path, "nchw", dynamic=True)
    made = export_onnx_classifier(dynamic, activation, "out", **source.input_options())
    assert onnx_info(made, "m").image_size == 24
    explicit = declared_input(str(config), size="28")
    made = export_onnx_classifier(dynamic, activation, "out", **explicit.input_options())
    assert onnx_info(made, "m").image_size == 28


def test_bad_preprocessing_options_are_one_clear_error(tmp_path):
    source, activation = tiny_classifier(tmp_path, "nchw")
    nhwc, nhwc_activation = tiny_classifier(tmp_path, "nhwc")
    flat, _ = tiny_classifier(tmp_path, "nchw", inputs=16)
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"model_type": "bert"}))
    base = ["export", "--onnx", str(source), "--activation", activation, "--logits", "out",
            "--out", str(tmp_path / "never.onnx")]
    cases = [
        (["--mean", "0.5,0.5"], "--mean needs 3 values"),
        (["--std", "0.2,0,0.2"], "--std values must be positive"),
        (["--std", "-1,1,1"], "--std values must be positive"),
        (["--mean", "nan,0,0"], "must be finite"),
        (["--mean", "a,b,c"], "--mean takes comma-separated numbers"),
        (["--pixel-range", "2"], "--pixel-range must be 1"),
        (["--channel-order", "grb"], "--channel-order must be one of"),
        (["--layout", "chw"], "--layout must be one of"),
        (["--size", "0"], "--size must be between 8"),
        (["--size", "32x48"], "bincam's frame is square"),
        (["--size", "64"], "is fixed at 32×32"),
        (["--fit", "zoom"], "unknown fit rule"),
        (["--preprocess", "timm:no_such_model_xyz"], "timm knows no model"),
        (["--preprocess", str(tmp_path / "missing.json")], "cannot read it"),
        (["--preprocess", str(tmp_path / "broken.json")], "is not JSON"),
        (["--preprocess", str(tmp_path / "other.json")], "not a Hugging Face"),
        (["--layout", "nhwc"], "it looks NCHW: give --layout nchw"),
    ]
    outcomes = [run_case(Case(" ".join(extra), base + extra, text), tmp_path)
                for extra, text in cases]
    outcomes.append(run_case(Case("NHWC model declared NCHW", [
        "export", "--onnx", str(nhwc), "--activation", nhwc_activation, "--logits", "out",
        "--out", str(tmp_path / "never.onnx")], "it looks NHWC: give --layout nhwc"), tmp_path))
    outcomes.append(run_case(Case("raw pixels, feature input", [
        "export", "--onnx", str(flat), "--activation", "x", "--logits", "out", "--out",
        str(tmp_path / "never.onnx"), "--raw-pixels"], "--raw-pixels needs an image input"),
        tmp_path))
    outcomes.append(run_case(Case("checkpoint with --mean", [
        "export", str(Path(__file__).resolve().parents[1] / "models" / "synth-small-balanced"),
        "--out", str(tmp_path / "never.onnx"), "--mean", "0.5,0.5,0.5"],
        "a checkpoint's input is its card's"), tmp_path))
    bad = [(o.case.name, o.verdict, o.message) for o in outcomes if o.verdict != "clean"]
    assert not bad, bad
    assert not (tmp_path / "never.onnx").exists()


def test_metadata_preprocessing_is_validated(tmp_path):
    from bincam.core.model_info import ModelInfo
    from bincam.errors import BincamError

    info = ModelInfo(["a"], "act", "dense", 32, channel_order="bgr", layout="nhwc",
                     pixel_range=(0.0, 255.0), mean=(1.0, 2.0, 3.0))
    props = info.to_metadata()
    back = ModelInfo.from_metadata(props, "m")
    assert (back.channel_order, back.layout, back.pixel_range, back.mean) == \
        ("bgr", "nhwc", (0.0, 255.0), (1.0, 2.0, 3.0))
    assert props["Image.BitmapPixelFormat"] == "Bgr8"
    assert props["Image.NominalPixelRange"] == "NominalRange_0_255"
    for key, value, text in (("bincam.layout", "hwc", "layout"),
                             ("bincam.pixel_range", "[1, 0]", "not an interval"),
                             ("bincam.mean", "[0, 0]", "mean"),
                             ("bincam.raw_pixels", '"yes"', "raw_pixels")):
        with pytest.raises(BincamError, match=text):
            ModelInfo.from_metadata(props | {key: value}, "m")
