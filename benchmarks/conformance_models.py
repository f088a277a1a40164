"""The torchvision side of `conformance_torchvision.py`: which models, how to build, export and
feed them, where their Grad-CAM tensor is in the ONNX graph, and the float64 torch reference of
the gradients at that tensor."""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from pathlib import Path

import numpy as np

NUM_CLASSES = 40
FORWARD_FACTOR = 10  # float32 error inside a network over its error at the logits (float32_floor)
MOVE_CAP = 1e-5      # the floor's relative move of the activations at most (~100 float32 ulps)

DEFAULT_MODELS = (
    "resnet18", "resnet50", "vgg11_bn", "alexnet", "squeezenet1_0", "densenet121", "googlenet",
    "inception_v3", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_v2_s",
    "mnasnet0_5", "regnet_y_400mf", "shufflenet_v2_x0_5", "resnext50_32x4d", "wide_resnet50_2",
    "convnext_tiny", "maxvit_t", "vit_tiny", "swin_tiny")

# the smallest input a model (or an exporter of it) takes when the requested size is smaller
# (inception_v3: 96 px works, but its last map is then 1×1 and equals the pooled one in value:
# two distinct tensors, so no unique torch site; at 128 px it is 2×2)
MIN_SIZE = {"inception_v3": 128, "maxvit_t": 224, "vit_b_16": 224, "vit_b_32": 224,
            "vit_l_16": 224, "vit_l_32": 224, "vit_h_14": 224}
# sizes tried next when exporting at the first fails (adaptive pooling to 7×7 / 6×6 needs a
# divisible feature map in the legacy exporter: vgg and alexnet at 224)
FALLBACK_SIZES = (224,)

# family → how its Grad-CAM tensor is found in the ONNX graph (see cam_tensor)
FAMILY_PREFIXES = (
    ("resnext", "resnet"), ("wide_resnet", "resnet"), ("resnet", "resnet"), ("vgg", "vgg"),
    ("alexnet", "alexnet"), ("squeezenet", "squeezenet"), ("densenet", "densenet"),
    ("googlenet", "googlenet"), ("inception", "inception"), ("mobilenet", "mobilenet"),
    ("efficientnet", "efficientnet"), ("mnasnet", "mnasnet"), ("regnet", "regnet"),
    ("shufflenet", "shufflenet"), ("convnext", "convnext"), ("maxvit", "maxvit"),
    ("vit", "vit"), ("swin", "swin"))
CAM_RULES = {
    # the input of the last MaxPool: the ReLU before it (the classifier has no pooling of its own)
    "vgg": "before_last_maxpool", "alexnet": "before_last_maxpool",
    # the input of the encoder's final LayerNorm: the last transformer block's output
    "vit": "before_last_layernorm", "swin": "before_last_layernorm",
    # the global pool's input is F.relu(features): step back over that ReLU to norm5's output
    "densenet": "pool_input_skip:Relu",
    # the global pool's input is ReLU(Conv1x1(features)), the class map: step back to features
    "squeezenet": "pool_input_skip:Relu,Conv",
}
SPATIAL_POOLS = ("GlobalAveragePool", "GlobalMaxPool", "AveragePool", "ReduceMean")


def family_of(name: str) -> str:
    for prefix, family in FAMILY_PREFIXES:
        if name.startswith(prefix):
            return family
    return "other"


# --------------------------------------------------------------------------------------- models

def build_model(name: str, size: int):
    """A torchvision classifier with random weights and ``NUM_CLASSES`` outputs, in eval mode.
    ``vit_tiny``, ``swin_tiny`` and ``maxvit_tiny`` are small configurations built with the
    architectures' constructors (so they run at 64 px in seconds)."""
    import torch
    import torchvision
    from torchvision.models import MaxVit, VisionTransformer
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    if name == "vit_tiny":
        model = VisionTransformer(image_size=size, patch_size=16, num_layers=2, num_heads=2,
                                  hidden_dim=64, mlp_dim=128, num_classes=NUM_CLASSES)
    elif name == "swin_tiny":
        model = SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                                window_size=[4, 4], stochastic_depth_prob=0.0,
                                num_classes=NUM_CLASSES)
    elif name == "maxvit_tiny":
        model = MaxVit(input_size=(size, size), stem_channels=16, partition_size=2,
                       block_channels=[32, 64], block_layers=[1, 1], head_dim=16,
                       stochastic_depth_prob=0.0, num_classes=NUM_CLASSES)
    else:
        kwargs = {"weights": None, "num_classes": NUM_CLASSES}
        if name in ("googlenet", "inception_v3"):
            kwargs.update(aux_logits=False, init_weights=True)
        if name.startswith("vit_"):
            kwargs["image_size"] = size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torchvision.models.get_model(name, **kwargs)
    return realistic(model, size)


def realistic(model, size: int):
    """Random weights that behave like trained ones where it matters here: a Linear layer
    initialised to zero (ViT's head) gets random weights, and BatchNorm running statistics are
    estimated from a few random batches (with the default ones, mean 0 and variance 1, the
    activations of deep nets vanish to ~1e-8 — MobileNetV3 — and every gradient is the same
    constant, which tests nothing)."""
    import torch
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.detach().any():
            nn.init.normal_(module.weight, std=module.in_features ** -0.5)
    no_identities(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the calibration batches
        model.train()
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for _ in range(2):
                model(torch.rand(4, 3, size, size, generator=generator))
    return model.eval()


def no_identities(model) -> None:
    """Random values for the parameters timm initialises to (almost) zero so that a block is
    an identity or a near-identity: zero-init-last BatchNorm gammas, layer-scale gammas (1e-6),
    NFNet skip-init gains, zero class tokens. With them a block's output equals its input within
    float tolerance, the torch module of a tensor cannot be told by value, and the gradient
    through the block is trivial: scales become U(0.5, 1.5), tensors N(0, fan_in^-1/2)."""
    import torch

    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or p.numel() == 0 or float(p.abs().max()) >= 1e-3:
                continue
            if p.dim() <= 1:
                p.copy_(torch.rand(p.shape, generator=generator) + 0.5)
            else:
                fan_in = max(1, int(np.prod(p.shape[1:])))
                p.copy_(torch.randn(p.shape, generator=generator) * fan_in ** -0.5)


def sizes_for(name: str, requested: int) -> list[int]:
    first = max(requested, MIN_SIZE.get(name, 0))
    return [first] + [s for s in FALLBACK_SIZES if s > first]


def export_torch(model, size: int, exporter: str, path: Path) -> None:
    """``torch.onnx.export`` at opset 18 with a dynamic batch axis (input ``images``, output
    ``logits``); the exporters' progress messages and warnings are swallowed."""
    import torch

    x = torch.rand(2, 3, size, size)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=18,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        elif exporter == "dynamo":
            torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18,
                              input_names=["images"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},),
                              external_data=False)
        else:
            raise ValueError(f"unknown exporter {exporter!r}")


# ----------------------------------------------------------------------------------- CAM tensor

def tensor_values(model_onnx, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """The values of the graph's tensors ``names`` on ``x``: one ONNX Runtime run (one thread)
    with them as the only outputs."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model_onnx)
    del probe.graph.output[:]
    for name in names:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {model_onnx.graph.input[0].name: x})))


def _constants(graph) -> dict:
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _ancestors(graph, sink: str) -> list:
    """The nodes ``sink`` depends on, in graph (topological) order."""
    producer = {o: n for n in graph.node for o in n.output}
    seen, stack, keep = {sink}, [sink], set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in keep:
            continue
        keep.add(id(node))
        for name in node.input:
            if name and name not in seen:
                seen.add(name)
                stack.append(name)
    return [n for n in graph.node if id(n) in keep]


def _is_spatial_pool(node, consts: dict) -> bool:
    """A pooling node over the two spatial axes of an NCHW tensor (for ReduceMean: axes {2, 3}
    or {-2, -1}; not the ReduceMean of a decomposed LayerNorm)."""
    from onnx import helper

    if node.op_type not in SPATIAL_POOLS:
        return False
    if node.op_type != "ReduceMean":
        return True
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1] in consts:
        axes = consts[node.input[1]]
    return axes is not None and sorted(int(a) % 4 for a in np.atleast_1d(axes)) == [2, 3] and \
        all(int(a) in (2, 3, -1, -2) for a in np.atleast_1d(axes))


def cam_tensor(model_onnx, family: str) -> str:
    """The name of the usual Grad-CAM tensor of an exported torchvision classifier: the input of
    the last global pool before the logits, with the family exceptions of ``CAM_RULES`` (vgg and
    alexnet: the ReLU before the last MaxPool; ViT and Swin: the last block's output, the input of
    the final LayerNorm; densenet and squeezenet: the pool's input stepped back over the ops
    named). Raises ``LookupError`` when the graph has no such node."""
    graph = model_onnx.graph
    logits = graph.output[0].name
    nodes = _ancestors(graph, logits)
    producer = {o: n for n in graph.node for o in n.output}
    rule = CAM_RULES.get(family, "pool_input")
    if rule == "before_last_maxpool":
        pools = [n for n in nodes if n.op_type == "MaxPool"]
        if not pools:
            raise LookupError("no MaxPool before the logits")
        return pools[-1].input[0]
    if rule == "before_last_layernorm":
        norms = [n for n in nodes if n.op_type == "LayerNormalization"]
        if not norms:
            raise LookupError("no LayerNormalization before the logits")
        return norms[-1].input[0]
    consts = _constants(graph)
    pools = [n for n in nodes if _is_spatial_pool(n, consts)]
    if not pools:
        raise LookupError(f"no global pool ({', '.join(SPATIAL_POOLS)}) before the logits")
    tensor = pools[-1].input[0]
    skip = rule.split(":", 1)[1].split(",") if ":" in rule else []
    for op in skip:
        node = producer.get(tensor)
        if node is None or node.op_type != op:
            raise LookupError(f"expected {op} before the pool's input {tensor!r}, found "
                              f"{node.op_type if node else 'a graph input'}")
        tensor = node.input[0]
    return tensor


# ------------------------------------------------------------------------------------ reference

def torch_site(model, x, activations: np.ndarray):
    """``(module name, "output" | "input")`` of the module (called once in the forward) whose
    output (or first input) equals the ONNX CAM tensor on ``x``: the outermost such module,
    preferring outputs. None when no module's does."""
    import torch

    target = torch.from_numpy(activations)
    scale = float(target.abs().max()) or 1.0
    calls, matches, handles = {}, {}, []

    def same(t) -> bool:
        return isinstance(t, torch.Tensor) and tuple(t.shape) == tuple(target.shape) and \
            float((t.detach().float() - target).abs().max()) <= 1e-3 * scale + 1e-6

    identity = {}  # (name, kind) -> (storage address, version): which tensor object it is

    def hook(name):
        def post(_module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            for kind, t in (("output", output), ("input", inputs[0] if inputs else None)):
                if same(t):
                    matches.setdefault(name, set()).add(kind)
                    identity[name, kind] = (t.data_ptr(), t._version)
        return post

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    found = [(kind != "output", name.count("."), name, kind) for name, kinds in matches.items()
             if calls.get(name) == 1 for kind in kinds]
    if not found:
        return None
    # distinct tensors with equal values (timm's zero_init_last makes later residual blocks
    # identities on a non-negative tensor: layer4.0's output equals layer4's, whose gradient
    # lacks layer4.1's ReLU mask) cannot be told apart by value: refuse, never guess
    if len({identity[name, kind] for *_, name, kind in found}) > 1:
        return None
    _, _, name, kind = min(found)
    return name, kind


def reference_gradients(model, site, x: np.ndarray, activations: np.ndarray,
                        dtype: str = "float64"):
    """``(logits [B,K], ∂z_k/∂A [B,K,*A])`` by autograd in ``dtype`` (float64: the reference),
    with the CAM tensor set to the engine's ``activations`` (a leaf) at ``site``."""
    import torch

    name, kind = site
    kind_of = getattr(torch, dtype)
    net = copy.deepcopy(model).to(kind_of).eval()
    module = net.get_submodule(name)
    leaf = torch.from_numpy(activations).to(kind_of).requires_grad_(True)
    # a clone: the net may modify the tensor in place (densenet's F.relu(features, inplace=True))
    if kind == "output":
        handle = module.register_forward_hook(lambda _m, _i, _o: leaf.clone())
    else:
        handle = module.register_forward_pre_hook(lambda _m, inputs: (leaf.clone(), *inputs[1:]))
    try:
        logits = net(torch.from_numpy(x).to(kind_of))
    finally:
        handle.remove()
    grads = [torch.autograd.grad(logits[:, k].sum(), leaf, retain_graph=True,
                                 allow_unused=True)[0] for k in range(logits.shape[1])]
    grads = [torch.zeros_like(leaf) if g is None else g for g in grads]
    return logits.detach().numpy(), torch.stack(grads, 1).detach().numpy()


def dense_gradients(engine, out: dict) -> np.ndarray:
    """The engine's ``∂z/∂A [B,K,*A]``, the factored form expanded."""
    if "gradients" in out:
        return out["gradients"].astype(np.float64)
    a = out["activations"].astype(np.float64)
    w = out["channel_weights"].astype(np.float64)                       # [K, C]
    mask = (a > 0).astype(np.float64) if engine.info.mask_positive else np.ones_like(a)
    return w[None, :, :, None, None] * mask[:, None]


def per_image_errors(g: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Relative L2 of ``g − ref`` over all logits, per image."""
    b = ref.shape[0]
    return np.linalg.norm((g - ref).reshape(b, -1), axis=1) / np.maximum(
        np.linalg.norm(ref.reshape(b, -1), axis=1), 1e-300)


def float32_floor(model, site, x: np.ndarray, activations: np.ndarray, reference: np.ndarray,
                  forward_error: float, to_maps=lambda g: g, repeats: int = 4,
                  seed: int = 0) -> np.ndarray:
    """Per image, how far gradients of a correct float32 engine may be from the float64
    ``reference`` at a ReLU kink: the largest relative L2 of (a) float32 torch autograd at the
    engine's ``activations`` and at copies moved by up to one float32 ulp, and (b) float64
    autograd at copies moved by ``FORWARD_FACTOR × forward_error`` relative, at most
    ``MOVE_CAP`` (the engine's own
    float32 error at the logits against float64 at the same activations; inside the network it
    is larger than at the pooled logits). A ReLU input within that of zero downstream of the CAM
    tensor takes either side of the kink, and so may the engine's."""
    rng = np.random.default_rng(seed)
    a32 = activations.astype(np.float32)
    worst = np.zeros(reference.shape[0])
    for r in range(repeats):
        a = a32 if r == 0 else (a32 + rng.uniform(-1, 1, a32.shape) * np.spacing(np.abs(a32))
                                ).astype(np.float32)
        _, g = reference_gradients(model, site, x.astype(np.float32), a, dtype="float32")
        worst = np.maximum(worst, per_image_errors(to_maps(g.astype(np.float64)), reference))
    eps = min(FORWARD_FACTOR * max(forward_error, float(np.finfo(np.float32).eps)), MOVE_CAP)
    for _ in range(repeats):
        a = activations.astype(np.float64) * (1 + eps * rng.uniform(-1, 1, activations.shape))
        _, g = reference_gradients(model, site, x.astype(np.float64), a)
        worst = np.maximum(worst, per_image_errors(to_maps(g), reference))
    return worst


def forward_error(engine_logits: np.ndarray, reference_logits: np.ndarray) -> float:
    """The engine's worst relative L2 error of an image's logits against float64."""
    diff = np.linalg.norm(engine_logits.astype(np.float64) - reference_logits, axis=1)
    return float((diff / np.maximum(np.linalg.norm(reference_logits, axis=1), 1e-300)).max())


def relative_errors(g: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Worst image's relative L2 over all logits, and worst (image, logit)'s."""
    b, k = ref.shape[:2]
    diff, base = (g - ref).reshape(b, k, -1), ref.reshape(b, k, -1)
    per_image = np.linalg.norm(diff.reshape(b, -1), axis=1) / np.maximum(
        np.linalg.norm(base.reshape(b, -1), axis=1), 1e-300)
    per_logit = np.linalg.norm(diff, axis=2) / np.maximum(np.linalg.norm(base, axis=2), 1e-300)
    return float(per_image.max()), float(per_logit.max())
