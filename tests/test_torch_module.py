"""Any torch classifier through ``bincam.explain(net, images, layer=…)``: the maps equal
pytorch-grad-cam's GradCAM for the same target (``ClassifierOutputTarget`` ↔ mode positive,
``BinaryLogitTarget`` ↔ mode predicted) on torchvision and timm models with random weights, in
float64 so the comparison measures formulas rather than float32 rounding. The affine head is found
(closed form) where there is one, autograd elsewhere; wrong layers and outputs are clear errors;
``export_torch`` and ``bincam export --torch`` write a gradient file the ORT engine explains alike.
"""

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

import bincam  # noqa: E402
from bincam.cam.targets import BinaryLogitTarget  # noqa: E402
from bincam.errors import BincamError  # noqa: E402
from cli_run import run_cli

TOL = 1e-5
K = 3


def random_net(factory, **kwargs):
    torch.manual_seed(0)
    net = factory(num_classes=K, **kwargs)
    for m in net.modules():  # torchvision's ViT head starts at zero: flat maps
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=m.in_features ** -0.5)
    return net.eval().double()


def oracle(net, layer_module, x, targets, reshape=None):
    with GradCAM(net, [layer_module], reshape_transform=reshape) as cam:
        return np.stack([cam(x, targets=[t] * len(x)) for t in targets], 1)


def assert_matches_gradcam(net, layer_module, x, tokens=None, reshape=None, **options):
    """Mode positive for every logit and mode predicted for logit 0, against the oracle."""
    size = x.shape[-1]
    positive = bincam.explain(net, x, layer=layer_module, mode="positive", tokens=tokens,
                              input_size=size, **options)
    predicted = bincam.explain(net, x, layer=layer_module, mode="predicted", attributes=[0],
                               tokens=tokens, input_size=size, **options)
    ours = np.concatenate([positive.heatmaps(size), predicted.heatmaps(size)], 1)
    targets = [ClassifierOutputTarget(k) for k in range(K)] + [BinaryLogitTarget(0)]
    expected = oracle(net, layer_module, x, targets, reshape)
    assert np.abs(ours - expected).max() <= TOL
    return positive


def images(size, n=2, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)


def vit_reshape(prefix):
    def reshape(t):
        side = int((t.shape[1] - prefix) ** 0.5)
        return t[:, prefix:].reshape(t.size(0), side, side, t.size(2)).permute(0, 3, 1, 2)
    return reshape


def test_resnet18_closed_form_and_autograd_equal_gradcam():
    net = random_net(torchvision.models.resnet18)
    x = images(64)
    result = assert_matches_gradcam(net, net.layer4, x)
    assert result.factored  # avgpool → fc: the closed form, found by the probe
    assert result.attributes == [f"logit{k}" for k in range(K)]
    dense = bincam.explain(net, x, layer="layer4", mode="positive", closed_form=False,
                           input_size=64)
    assert not dense.factored
    np.testing.assert_allclose(dense.heatmaps(), result.heatmaps(), atol=1e-9)


def test_non_affine_head_takes_autograd():
    net = random_net(torchvision.models.mobilenet_v3_small)  # Linear → Hardswish → Linear
    result = assert_matches_gradcam(net, net.features, images(64))
    assert not result.factored
    with pytest.raises(BincamError, match="no affine head"):
        bincam.explain(net, images(64), layer="features", closed_form=True, input_size=64)


def test_relu_before_the_pool_is_found():
    """DenseNet: norm5 → F.relu → pool → Linear; the relu makes the factored mask."""
    net = random_net(torchvision.models.densenet121)
    x = images(64)
    engine = bincam.open_engine(net, layer="features.norm5", input_size=64)
    assert engine.info.gradient_layout == "factored" and engine.info.mask_positive
    dense = bincam.explain(net, x, layer="features.norm5", closed_form=False, input_size=64)
    np.testing.assert_allclose(engine.explain(x).heatmaps(), dense.heatmaps(), atol=1e-9)


def test_densenet_in_place_relu_maps_are_the_binary_rule():
    """torchvision's DenseNet runs ``F.relu(norm5(…), inplace=True)`` (functional: no module's
    ``inplace`` flag turns it off). bincam's raw maps are the binary rule on norm5's own output
    ``A`` (float64 autograd, no hooks): ``Σ_c mean_hw(sign(z_k)·∂z_k/∂A_c)·A_c``.
    pytorch-grad-cam agrees once the net goes on with a copy of ``A`` (its hook keeps ``A``
    itself); on the model as given its kept ``A`` is overwritten by the ReLU (post-ReLU maps,
    pre-ReLU gradients) and differs."""
    net = random_net(torchvision.models.densenet121)
    x = images(64)
    a = net.features(x).detach().requires_grad_()  # features ends with norm5
    z = net.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(
        nn.functional.relu(a), 1), 1))
    expected = []
    for k in range(K):
        (g,) = torch.autograd.grad(z[:, k].sum(), a, retain_graph=True)
        w = (torch.sign(z[:, k])[:, None, None, None] * g).mean((2, 3), keepdim=True)
        expected.append((w * a).sum(1).detach())
    expected = torch.stack(expected, 1).numpy()
    result = bincam.explain(net, x, layer=net.features.norm5, mode="predicted", input_size=64)
    scale = np.abs(expected).max()
    assert np.abs(result.raw - expected).max() <= 1e-9 * scale
    np.testing.assert_allclose(result.logits, z.detach().numpy(), rtol=1e-12, atol=1e-12)

    layer = net.features.norm5
    targets = [BinaryLogitTarget(k) for k in range(K)]
    with GradCAM(net, [layer]) as cam:  # the model as given: A changed after capture
        as_given = np.stack([cam(x, targets=[t] * len(x)) for t in targets], 1)
        handle = layer.register_forward_hook(lambda _m, _i, out: out.clone())
        try:
            cloned = np.stack([cam(x, targets=[t] * len(x)) for t in targets], 1)
        finally:
            handle.remove()
    ours = result.heatmaps(64)
    assert np.abs(ours - cloned).max() <= TOL
    assert np.abs(ours - as_given).max() > 1e-2


def test_vit_tokens_equal_gradcam():
    net = random_net(torchvision.models.VisionTransformer, image_size=32, patch_size=8,
                     num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    layer = net.encoder.layers[-1].ln_1
    assert_matches_gradcam(net, layer, images(32), tokens="vit", reshape=vit_reshape(1))
    # the same maps from a reshape callable given as tokens=
    assert_matches_gradcam(net, layer, images(32), tokens=vit_reshape(1), reshape=vit_reshape(1))


@pytest.mark.parametrize("name, layer, tokens, prefix", [
    ("resnet18d", "layer4", None, None),
    ("deit_tiny_distilled_patch16_224", "blocks.1.norm1", "vit", 2),
    ("swin_tiny_patch4_window7_224", "layers.3.blocks.1.norm1", "swin", None),
])
def test_timm_models_equal_gradcam(name, layer, tokens, prefix):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    options = {"depth": 2} if name.startswith("deit") else {"depths": (1, 1, 1, 2)} \
        if name.startswith("swin") else {}
    net = timm.create_model(name, pretrained=False, num_classes=K, **options)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=m.in_features ** -0.5)
    net = net.eval().double()
    size = 64 if tokens is None else 224
    reshape = (vit_reshape(prefix) if tokens == "vit" else
               (lambda t: t.permute(0, 3, 1, 2)) if tokens == "swin" else None)
    assert_matches_gradcam(net, net.get_submodule(layer), images(size, n=1), tokens=tokens,
                           reshape=reshape)


class DictOutput(nn.Module):
    """A Hugging-Face-style classifier: returns a dict, logits under "logits"."""

    def __init__(self):
        super().__init__()
        self.body = torchvision.models.resnet18(num_classes=K)

    def forward(self, x):
        return {"logits": self.body(x), "hidden": x.mean()}


def test_dict_output_and_outputs_callable():
    torch.manual_seed(0)
    net = DictOutput().eval().double()
    x = images(64)
    picked = bincam.explain(net, x, layer=net.body.layer4, input_size=64, names=["a", "b", "c"])
    assert picked.attributes == ["a", "b", "c"] and picked.factored
    given = bincam.explain(net, x, layer="body.layer4", input_size=64,
                           outputs=lambda out: out["logits"])
    np.testing.assert_allclose(picked.heatmaps(), given.heatmaps(), atol=1e-12)

    class TupleOutput(DictOutput):
        def forward(self, x):
            return (self.body(x), x.mean())

    net = TupleOutput().eval().double()
    with pytest.raises(BincamError, match="outputs="):
        bincam.explain(net, x, layer="body.layer4", input_size=64)
    assert_matches_gradcam(_First(net).eval(), net.body.layer4, x)


class _First(nn.Module):
    """The tuple model's first output, for pytorch-grad-cam (which needs a logits tensor)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[0]


def test_wrong_layer_and_bad_inputs_are_clear_errors():
    net = torchvision.models.resnet18(num_classes=2).eval()
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(BincamError, match="no layer 'layer5'.*close names: layer"):
        bincam.explain(net, x, layer="layer5", input_size=64)
    with pytest.raises(BincamError, match="not a submodule"):
        bincam.explain(net, x, layer=nn.Conv2d(1, 1, 1), input_size=64)
    with pytest.raises(BincamError, match="give layer="):
        bincam.explain(net, x, input_size=64)
    with pytest.raises(BincamError, match="ran 2 times"):  # BasicBlock's ReLU is used twice
        bincam.explain(net, x, layer="layer4.1.relu", input_size=64)
    with pytest.raises(BincamError, match="tokens='vit'"):
        vit = torchvision.models.VisionTransformer(32, 8, 1, 2, 32, 64, num_classes=2).eval()
        bincam.explain(vit, torch.rand(1, 3, 32, 32), layer="encoder.layers.encoder_layer_0.ln_1",
                       input_size=32)
    with pytest.raises(BincamError, match="training mode"):
        bincam.explain(net.train(), x, layer="layer4", input_size=64)
    with pytest.raises(BincamError, match="2 logits but 3 names"):
        bincam.explain(net.eval(), x, layer="layer4", input_size=64, names=["a", "b", "c"])


def test_export_torch_file_explains_like_torch(tmp_path):
    from bincam.runtime import open_engine

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2).eval()
    path = tmp_path / "r18.onnx"
    bincam.export_torch(net, torch.rand(1, 3, 64, 64), layer=net.layer4, out=path,
                        names=["no", "yes"])
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    with open_engine(path) as engine:
        assert engine.info.gradient_layout == "factored"
        assert engine.info.attributes == ["no", "yes"] and engine.info.target_layer == "layer4"
        ours = engine.explain(x).heatmaps()
    theirs = bincam.explain(net, x, layer="layer4", input_size=64).heatmaps()
    assert np.abs(ours - theirs).max() <= 1e-4


def test_cli_export_torch(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch, torchvision\n"
        "def small():\n"
        "    torch.manual_seed(0)\n"
        "    return torchvision.models.mobilenet_v3_small(num_classes=2)\n")
    monkeypatch.chdir(tmp_path)
    status, text = run_cli(["export", "--torch", "my_models:small", "--out", "m.onnx"])
    assert status == 2 and "error: --torch needs --layer" in text
    status, text = run_cli(["export", "--torch", "my_models:nothing", "--layer", "features",
                            "--out", "m.onnx"])
    assert status == 2 and "no callable 'nothing'" in text
    assert not (tmp_path / "m.onnx").exists()
    status, text = run_cli(["export", "--torch", "my_models:small", "--layer", "features",
                            "--out", "m.onnx", "--no-checks"])
    assert status == 0, text
    assert "dense gradients" in text and (tmp_path / "m.onnx").is_file()
