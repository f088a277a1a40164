"""The timm side of `conformance_timm.py`: which models (the smallest variant of every family),
how to build them small and realistic (random weights, BatchNorm statistics estimated, no
identity blocks), where their usual Grad-CAM tensor is in the ONNX graph (the mid-network
one: `conformance_mid`), and how a token tensor maps to the ``[B, C, h, w]`` maps of
``--tokens`` (for the reference)."""

from __future__ import annotations

import math
import warnings

import numpy as np

from conformance_mid import mid_tensor  # noqa: F401 - re-exported for conformance_timm
from conformance_models import (_ancestors, _constants, _is_spatial_pool, realistic,
                                tensor_values)

NUM_CLASSES = 5
OPSET = 17

# (timm name, family, create_model overrides): the smallest variant of each family; transformers
# at a small image size where timm's constructor takes one (``img_size``; Swin with a window
# that divides every stage's grid)
MODELS = (
    ("resnet10t", "ResNet", {}), ("resnet18", "ResNet", {}), ("resnet18d", "ResNet-D", {}),
    ("resnet26d", "ResNet-D", {}), ("seresnet18", "SE-ResNet", {}),
    ("skresnet18", "SK-ResNet", {}), ("res2net50_26w_4s", "Res2Net", {}),
    ("resnest14d", "ResNeSt", {}), ("ecaresnet26t", "ECA-ResNet", {}),
    ("resnext26ts", "ResNeXt (byobnet)", {}), ("gcresnet33ts", "GC-ResNet", {}),
    ("regnetx_002", "RegNet", {}), ("regnety_002", "RegNet", {}),
    ("regnetz_005", "RegNetZ", {}),
    ("efficientnet_lite0", "EfficientNet", {}), ("efficientnet_b0", "EfficientNet", {}),
    ("tf_efficientnetv2_b0", "EfficientNetV2", {}), ("mixnet_s", "MixNet", {}),
    ("mobilenetv3_small_050", "MobileNetV3", {}), ("mobilenetv2_050", "MobileNetV2", {}),
    ("mobilenetv4_conv_small", "MobileNetV4", {}), ("lcnet_050", "LCNet", {}),
    ("ghostnet_050", "GhostNet", {}), ("ghostnetv2_100", "GhostNetV2", {}),
    ("rexnet_100", "ReXNet", {}), ("mnasnet_small", "MNASNet", {}),
    ("repvgg_a0", "RepVGG", {}), ("mobileone_s0", "MobileOne", {}),
    ("fastvit_t8", "FastViT", {}), ("repghostnet_050", "RepGhost", {}),
    ("repvit_m0_9", "RepViT", {}),
    ("convnext_atto", "ConvNeXt", {}), ("convnextv2_atto", "ConvNeXt-V2", {}),
    ("edgenext_xx_small", "EdgeNeXt", {}), ("inception_next_tiny", "InceptionNeXt", {}),
    ("dla46_c", "DLA", {}), ("hrnet_w18_small", "HRNet", {}), ("cs3darknet_s", "CSPNet", {}),
    ("dpn48b", "DPN", {}), ("xception41", "Xception", {}), ("inception_v3", "Inception", {}),
    ("ese_vovnet19b_slim", "VoVNet", {}), ("selecsls42b", "SelecSLS", {}),
    ("densenet121", "DenseNet", {}), ("vgg11", "VGG", {}),
    ("nf_resnet26", "NFNet", {}), ("nf_regnet_b0", "NFNet", {}), ("eca_nfnet_l0", "NFNet", {}),
    ("poolformer_s12", "PoolFormer", {}), ("poolformerv2_s12", "PoolFormer", {}),
    ("convformer_s18", "MetaFormer", {}), ("caformer_s18", "MetaFormer", {}),
    ("vit_tiny_patch16_224", "ViT", {"img_size": 96}),
    ("deit_tiny_patch16_224", "DeiT", {"img_size": 96}),
    ("deit_tiny_distilled_patch16_224", "DeiT", {"img_size": 96}),
    ("vit_little_patch16_reg4_gap_256", "ViT", {"img_size": 96}),
    ("beit_base_patch16_224", "BEiT", {"img_size": 96}),
    ("eva02_tiny_patch14_224", "EVA", {"img_size": 98}),
    ("swin_tiny_patch4_window7_224", "Swin", {"img_size": 96, "window_size": 3}),
    ("maxvit_nano_rw_256", "MaxViT", {"img_size": 128}),
    ("coat_lite_tiny", "CoaT", {"img_size": 96}), ("levit_128s", "LeViT", {"img_size": 128}),
    ("mobilevit_xxs", "MobileViT", {}), ("mobilevitv2_050", "MobileViT", {}),
    ("efficientformer_l1", "EfficientFormer", {"img_size": 128}),
    ("efficientformerv2_s0", "EfficientFormer", {"img_size": 128}),
    ("pit_ti_224", "PiT", {"img_size": 128}), ("twins_pcpvt_small", "Twins", {"img_size": 96}),
    ("crossvit_tiny_240", "CrossViT", {"img_size": 240}),
    ("efficientvit_b0", "EfficientViT", {}), ("pvt_v2_b0", "PVT-v2", {"img_size": 96}),
    ("mixer_s32_224", "MLP-Mixer", {"img_size": 96}),
)
FAMILY = {name: family for name, family, _ in MODELS}
OVERRIDES = {name: kwargs for name, _, kwargs in MODELS}
DEFAULT_SIZE = 96


def build_timm(name: str, size: int = DEFAULT_SIZE, overrides: dict | None = None):
    """``(model, size)``: a timm classifier with random weights and ``NUM_CLASSES`` outputs at
    ``size`` px (or the size its overrides fix, or its native size when the small one fails),
    made realistic (``conformance_models.realistic``), in eval mode."""
    import timm
    import torch

    kwargs = dict(OVERRIDES.get(name, {}) if overrides is None else overrides)
    sizes = [kwargs.get("img_size", size)]
    errors = []
    for s in sizes + [None]:
        torch.manual_seed(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES,
                                          **(kwargs if s is not None else {}))
            if s is None:  # native size
                s = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
            model.eval()
            with torch.no_grad():
                model(torch.rand(1, 3, s, s))
        except Exception as exc:  # noqa: BLE001 - try the next size
            errors.append(f"{s}px: {exc.__class__.__name__}: {str(exc)[:120]}")
            continue
        return realistic(model, s), s
    raise RuntimeError("; ".join(errors))


# ----------------------------------------------------------------------------------- CAM tensors

def run_shapes(model_onnx, size: int, names=None) -> dict[str, list[int]]:
    """The real shapes (batch 1) of ``names``, by default the inputs of every
    LayerNormalization, pooling and ReduceMean node on the way to the logits: one ONNX Runtime
    run with them as outputs (shape inference leaves the dims of timm's dynamic reshapes
    unknown)."""
    graph = model_onnx.graph
    nodes = _ancestors(graph, graph.output[0].name)
    wanted = {n.input[0] for n in nodes if n.op_type in (
        "LayerNormalization", "ReduceMean", "GlobalAveragePool", "GlobalMaxPool", "AveragePool")}
    wanted -= {i.name for i in graph.input} | {i.name for i in graph.initializer}
    names = sorted(wanted) if names is None else list(names)
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    return {name: list(v.shape) for name, v in tensor_values(model_onnx, names, x).items()}


def usual_tensor(model_onnx, shapes: dict) -> str:
    """The usual Grad-CAM tensor of an exported timm classifier: whichever comes last of the
    input of the last global spatial pool of an ``[B, C, h, w]`` map (CNNs), and the input of the
    last LayerNormalization over more than one token (transformers: the last block's output,
    before the final norm: ``[B, N, C]`` or Swin's ``[B, h, w, C]``); where the tokens have a
    prefix (a class token: the head reads it alone, the patch tokens' gradients there are 0) the
    input of the last block's ``norm1`` instead (pytorch-grad-cam's ``blocks[-1].norm1``);
    failing all, the input of the last ReduceMean over more than one position (LeViT's token
    mean). ``shapes``: from ``run_shapes``. Raises LookupError."""
    graph = model_onnx.graph
    nodes = _ancestors(graph, graph.output[0].name)
    consts = _constants(graph)

    def positions(name, channels_last: bool = True) -> int:
        """How many positions (tokens, pixels) a tensor has: ``[B, N, C]``, ``[B, h, w, C]``
        (channels last) or ``[B, C, h, w]``."""
        dims = shapes.get(name, [])[1:]
        if len(dims) < 2:
            return 0
        return int(np.prod(dims[:-1])) if channels_last else int(np.prod(dims[1:]))

    pool = ln = mean = norm1 = None
    for i, node in enumerate(nodes):
        if _is_spatial_pool(node, consts) and len(shapes.get(node.input[0], [])) == 4:
            if positions(node.input[0], channels_last=False) > 1:
                pool = (i, node.input[0])
        elif node.op_type == "LayerNormalization" and positions(node.input[0]) > 1:
            ln = (i, node.input[0])
            if "/norm1/" in node.name or node.name.endswith("/norm1"):
                norm1 = (i, node.input[0])
        elif node.op_type == "ReduceMean" and positions(node.input[0]) > 1:
            mean = (i, node.input[0])
    found = [f for f in (pool, ln) if f is not None]
    if found:
        _, tensor = max(found)
        dims = shapes.get(tensor, [])[1:]
        prefixed = len(dims) == 2 and math.isqrt(dims[0]) ** 2 != dims[0]
        return norm1[1] if prefixed and norm1 is not None else tensor
    if mean is not None:
        return mean[1]
    raise LookupError("no global pool, final LayerNorm or token mean before the logits")


def token_layout(shape: list[int | None], feeds_layernorm: bool) -> str:
    """The ``--tokens`` layout a tensor needs (``shape`` with the batch axis first): ``vit`` for
    ``[B, P + h·w, C]`` with a square h·w and a few prefix tokens (``bincam.export.tokens``),
    ``swin`` for ``[B, h, w, C]`` normalised per token, else ``none``."""
    from bincam.export.tokens import vit_prefix

    dims = shape[1:]
    if len(dims) == 2 and all(dims) and vit_prefix(dims[0]) is not None:
        return "vit"
    if len(dims) == 3 and all(dims) and feeds_layernorm and dims[0] * dims[1] > 1:
        return "swin"
    return "none"


def to_maps(t: np.ndarray, layout: str, lead: int) -> np.ndarray:
    """A token tensor (``lead`` leading axes, then the token axes) as maps ``[..., C, h, w]``,
    the way ``bincam.export.tokens`` maps it in the graph."""
    if layout == "swin":
        axes = list(range(lead))
        return t.transpose(axes + [lead + 2, lead, lead + 1])
    if layout == "vit":
        from bincam.export.tokens import vit_prefix

        n = t.shape[lead]
        prefix = vit_prefix(n)
        side = math.isqrt(n - prefix)
        body = np.moveaxis(t.take(range(prefix, n), axis=lead), lead + 1, lead)
        return body.reshape(t.shape[:lead] + (t.shape[-1], side, side))
    return t
