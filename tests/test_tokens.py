"""Vision-transformer token activations (``--tokens vit``): the class token dropped, tokens shown
as ``[B, C, h, w]`` maps; the gradients equal float64 autograd and ``bincam cam`` draws them."""

import subprocess
import sys
import numpy as np
import onnx
import pytest
import torch
import torchvision
from PIL import Image

from bincam.errors import BincamError
from bincam.export.checks import run_checks
from bincam.export.forward import export_module
from bincam.export.model import export_onnx_classifier, save_onnx
from bincam.runtime import open_engine


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                               num_heads=2, hidden_dim=32, mlp_dim=64,
                                               num_classes=5).eval()
    torch.nn.init.normal_(net.heads.head.weight)  # torchvision starts the head at zero
    path = export_module(net, tmp_path_factory.mktemp("vit") / "vit.onnx", 32)
    # pytorch-grad-cam's ViT layer: the last block's first LayerNorm (before attention mixes)
    norms = [n for n in onnx.load(str(path)).graph.node if n.op_type == "LayerNormalization"]
    return net, path, norms[-3].output[0]


def test_vit_tokens_match_autograd_and_pass_the_checks(vit):
    net, path, tap = vit
    model = export_onnx_classifier(path, tap, "logits", tokens="vit")
    checks = run_checks(model)
    assert all(c.ok for c in checks), [(c.name, c.detail) for c in checks if not c.ok]
    engine = open_engine(model.SerializeToString(), "ort")
    assert engine.info.token_layout == "vit" and engine.info.gradient_layout == "dense"
    x = np.random.default_rng(3).random((3, 3, 32, 32), dtype=np.float32)
    out = engine.run(x)
    assert out["activations"].shape == (3, 32, 4, 4)
    captured = {}
    net64 = net.double()
    handle = net64.encoder.layers[-1].ln_1.register_forward_hook(
        lambda m, i, o: captured.setdefault("t", o))
    z = net64(torch.from_numpy(x).double())
    handle.remove()
    t = captured["t"]
    ref = torch.stack([torch.autograd.grad(z[:, k].sum(), t, retain_graph=True)[0]
                       for k in range(5)], 1)[:, :, 1:].transpose(2, 3).reshape(3, 5, 32, 4, 4)
    ref = ref.numpy()
    for k in range(5):
        rel = np.linalg.norm(out["gradients"][:, k] - ref[:, k]) / np.linalg.norm(ref[:, k])
        assert rel <= 1e-5, (k, rel)
    np.testing.assert_allclose(out["activations"], t[:, 1:].transpose(1, 2).reshape(
        3, 32, 4, 4).detach().numpy(), atol=1e-5)


def test_bincam_cam_draws_vit_maps(vit, tmp_path):
    _, path, tap = vit
    exported = save_onnx(export_onnx_classifier(path, tap, "logits", tokens="vit"),
                         tmp_path / "vit_cam.onnx")
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), np.uint8)).save(
            tmp_path / f"img{i}.png")
    proc = subprocess.run([sys.executable, "-m", "bincam", "cam", str(exported),
                           str(tmp_path / "img0.png"), str(tmp_path / "img1.png"), "--out",
                           str(tmp_path / "cams"), "--size", "64"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "cams" / "overlays").rglob("*.png"))) == 10
    assert (np.load(tmp_path / "cams" / "cams.npz")["raw"].shape == (2, 5, 4, 4))


def test_wrong_token_layouts_are_refused(vit):
    _, path, tap = vit
    with pytest.raises(BincamError, match="--tokens swin needs the activation"):
        export_onnx_classifier(path, tap, "logits", tokens="swin")
    with pytest.raises(BincamError, match="--tokens must be one of none, vit, swin"):
        export_onnx_classifier(path, tap, "logits", tokens="deit")


def test_candidates_list_the_usual_layers(vit, tmp_path):
    from bincam.export.candidates import cam_candidates

    _, path, tap = vit
    found = {c["tensor"]: c for c in cam_candidates(onnx.load(str(path)), "logits", most=40)}
    assert found[tap]["tokens"] == "vit" and found[tap]["shape"] == ["B", 17, 32]
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2)).eval()
    cnn = export_module(net, tmp_path / "cnn.onnx", 10)
    first = cam_candidates(onnx.load(str(cnn)), "logits")[0]
    assert first["shape"] == ["B", 4, 8, 8] and "usual" in first["note"]


def test_swin_tokens_match_autograd(tmp_path):
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    net = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                          window_size=[4, 4], num_classes=5).eval()
    path = export_module(net, tmp_path / "swin.onnx", 32)
    norms = [n for n in onnx.load(str(path)).graph.node if n.op_type == "LayerNormalization"]
    model = export_onnx_classifier(path, norms[-1].input[0], "logits", tokens="swin")
    assert all(c.ok for c in run_checks(model))
    engine = open_engine(model.SerializeToString(), "ort")
    x = np.random.default_rng(4).random((3, 3, 32, 32), dtype=np.float32)
    out = engine.run(x)
    captured = {}
    net64 = net.double()
    net64.features[-1].register_forward_hook(lambda m, i, o: captured.setdefault("t", o))
    z = net64(torch.from_numpy(x).double())
    ref = torch.stack([torch.autograd.grad(z[:, k].sum(), captured["t"], retain_graph=True)[0]
                       for k in range(5)], 1).permute(0, 1, 4, 2, 3).numpy()
    for k in range(5):
        rel = np.linalg.norm(out["gradients"][:, k] - ref[:, k]) / np.linalg.norm(ref[:, k])
        assert rel <= 1e-5, (k, rel)
    assert engine.explain(x, "gradcam").heatmaps().shape == (3, 5, 32, 32)
