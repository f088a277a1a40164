"""``bincam.explain(net, images, layer=…)`` on every torchvision classification family and timm
models (random weights) against pytorch-grad-cam's GradCAM maps for the same target, written to
``benchmarks/results/torch_module_gradcam.{md,json}``.

Per model: parity in float64 (both sides; float32 rounding, magnified by the min-max, would
otherwise show on flat maps): mode ``positive`` against ``ClassifierOutputTarget(k)`` for two
logits and mode ``predicted`` against ``BinaryLogitTarget(0)``; the path bincam took (closed form
of an affine head, or autograd); time of one float32 ``explain`` of both logits (after a warm-up)
and of pytorch-grad-cam's two calls, batch 2 at the model's native size.

Models that change the layer's output in place after the layer returned it (found by a forward
that keeps the output and a copy: torchvision's DenseNet runs ``F.relu(norm5(…), inplace=True)``)
give pytorch-grad-cam, whose hook keeps that very tensor on a CPU (``.cpu()`` copies only from a
GPU), post-ReLU activations with pre-ReLU gradients: not the Grad-CAM of the layer. For them the
reference is pytorch-grad-cam on the model with the layer's output copied after its hook (the net
goes on with the copy, the same function); also reported: the model as given, and a copy with
every module's ``inplace`` flag off (the brief's first idea; it cannot reach a functional
``F.relu``, so DenseNet still differs). ``tests/test_torch_module.py`` checks bincam's DenseNet
maps against float64 autograd of the binary rule itself.

    nice python benchmarks/torch_module_gradcam.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torchvision.models as tv
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from bincam import explain
from bincam.cam.targets import BinaryLogitTarget
from bincam.files import write_report
from bincam.machine import machine_info, machine_line

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
K = 4

# name → (factory, layer, tokens, size); the layer pytorch-grad-cam's docs use for the family
TORCHVISION = {
    "resnet18": (tv.resnet18, "layer4", None, 224),
    "resnext50_32x4d": (tv.resnext50_32x4d, "layer4", None, 224),
    "wide_resnet50_2": (tv.wide_resnet50_2, "layer4", None, 224),
    "densenet121": (tv.densenet121, "features.norm5", None, 224),
    "vgg11": (tv.vgg11, "features", None, 224),
    "alexnet": (tv.alexnet, "features", None, 224),
    "squeezenet1_1": (tv.squeezenet1_1, "features", None, 224),
    "googlenet": (lambda **k: tv.googlenet(aux_logits=False, init_weights=True, **k),
                  "inception5b", None, 224),
    "inception_v3": (lambda **k: tv.inception_v3(aux_logits=False, init_weights=True, **k),
                     "Mixed_7c", None, 299),
    "mobilenet_v2": (tv.mobilenet_v2, "features", None, 224),
    "mobilenet_v3_small": (tv.mobilenet_v3_small, "features", None, 224),
    "mnasnet0_5": (tv.mnasnet0_5, "layers", None, 224),
    "shufflenet_v2_x0_5": (tv.shufflenet_v2_x0_5, "conv5", None, 224),
    "efficientnet_b0": (tv.efficientnet_b0, "features", None, 224),
    "efficientnet_v2_s": (tv.efficientnet_v2_s, "features", None, 384),
    "regnet_y_400mf": (tv.regnet_y_400mf, "trunk_output", None, 224),
    "convnext_tiny": (tv.convnext_tiny, "features", None, 224),
    "vit_b_16": (tv.vit_b_16, "encoder.layers.encoder_layer_11.ln_1", "vit", 224),
    "swin_t": (tv.swin_t, "features.7.1.norm1", "swin", 224),
    "swin_v2_t": (tv.swin_v2_t, "features.7.1.norm1", "swin", 256),
    "maxvit_t": (tv.maxvit_t, "blocks.3", None, 224),
}
TIMM = {
    "resnet18d": ("layer4", None), "seresnext26d_32x4d": ("layer4", None),
    "efficientnet_b0": ("bn2", None), "mobilenetv3_small_100": ("blocks", None),
    "convnext_atto": ("stages", None), "regnety_002": ("s4", None),
    "ghostnet_100": ("blocks", None), "rexnet_100": ("features", None),
    "repvgg_a0": ("stages", None), "dla34": ("level5", None), "cspresnet50": ("stages", None),
    "xception41": ("blocks", None), "inception_v3": ("Mixed_7c", None),
    "vit_tiny_patch16_224": ("blocks.11.norm1", "vit"),
    "deit_tiny_patch16_224": ("blocks.11.norm1", "vit"),
    "deit_tiny_distilled_patch16_224": ("blocks.11.norm1", "vit"),
    "swin_tiny_patch4_window7_224": ("layers.3.blocks.1.norm1", "swin"),
    "poolformer_s12": ("stages", None), "edgenext_xx_small": ("stages", None),
    "levit_128s": ("stages", "vit"), "mobilevit_xxs": ("final_conv", None),
    "coat_lite_tiny": ("serial_blocks4.1.norm1", "vit"), "efficientformer_l1": ("stages.2", None),
    "resnet50d": ("layer4", None),
}
def build(source: str, name: str):
    torch.manual_seed(0)
    if source == "torchvision":
        factory, layer, tokens, size = TORCHVISION[name]
        net = factory(num_classes=K)
    else:
        layer, tokens = TIMM[name]
        net = timm.create_model(name, pretrained=False, num_classes=K)
        size = net.pretrained_cfg["input_size"][-1]
    for m in net.modules():  # some heads start at zero (torchvision ViT): maps would be flat
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=m.in_features ** -0.5)
    return net.eval(), layer, tokens, size


def reshape_for(tokens, net):
    if tokens == "swin":
        return lambda t: t.permute(0, 3, 1, 2)
    if tokens == "vit":
        def vit(t):
            prefix = getattr(net, "num_prefix_tokens", None)
            if prefix is None:
                n = t.shape[1]
                prefix = 1 if int((n - 1) ** 0.5) ** 2 == n - 1 else 0
            side = int((t.shape[1] - prefix) ** 0.5)
            return t[:, prefix:].reshape(t.size(0), side, side, t.size(2)).permute(0, 3, 1, 2)
        return vit
    return None


def changes_output_in_place(net, layer: str, x) -> bool:
    """Whether ``net`` changes ``layer``'s output tensor in place after the layer returned it."""
    kept = {}

    def keep(_m, _i, out):
        if isinstance(out, torch.Tensor):
            kept["out"], kept["copy"] = out, out.clone()

    handle = net.get_submodule(layer).register_forward_hook(keep)
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    return "out" in kept and not torch.equal(kept["out"], kept["copy"])


def without_inplace_flags(net):
    """A copy of ``net`` whose modules with an ``inplace`` flag write new tensors."""
    twin = copy.deepcopy(net)
    for m in twin.modules():
        if getattr(m, "inplace", None) is True:
            m.inplace = False
    return twin


def gradcam_maps(net, layer, tokens, x, targets, clone=False):
    module = net.get_submodule(layer)
    with GradCAM(net, [module], reshape_transform=reshape_for(tokens, net)) as cam:
        # after pytorch-grad-cam's own hook: it keeps the layer's output, the net gets a copy
        handle = module.register_forward_hook(lambda m, i, o: o.clone()) if clone else None
        try:
            return np.stack([cam(x, targets=[t] * len(x)) for t in targets], 1)
        finally:
            if handle:
                handle.remove()


def run(source: str, name: str) -> dict:
    net, layer, tokens, size = build(source, name)
    row = {"model": f"{source}/{name}", "layer": layer, "tokens": tokens or "", "size": size}
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    explain(net, x, layer=layer, tokens=tokens, attributes=[0, 1], mode="positive")  # warm-up
    start = time.perf_counter()
    ours32 = explain(net, x, layer=layer, tokens=tokens, attributes=[0, 1], mode="positive")
    row["bincam_s"] = time.perf_counter() - start
    row["path"] = "closed form" if ours32.factored else "autograd"
    start = time.perf_counter()
    gradcam_maps(net, layer, tokens, x, [ClassifierOutputTarget(0), ClassifierOutputTarget(1)])
    row["gradcam_s"] = time.perf_counter() - start
    net64, x64 = net.double(), x.double()
    positive = explain(net64, x64, layer=layer, tokens=tokens, attributes=[0, 1],
                       mode="positive").heatmaps(size)
    predicted = explain(net64, x64, layer=layer, tokens=tokens, attributes=[0],
                        mode="predicted").heatmaps(size)
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(1), BinaryLogitTarget(0)]
    ours = np.concatenate([positive, predicted], 1)

    def diff(model, clone=False):
        return float(np.abs(ours - gradcam_maps(model, layer, tokens, x64, targets,
                                                clone)).max())

    row["in_place"] = changes_output_in_place(net64, layer, x64)
    if row["in_place"]:  # the reference: the layer's output copied after pytorch-grad-cam's hook
        row["max_abs_diff"] = diff(net64, clone=True)
        row["max_abs_diff_as_given"] = diff(net64)
        row["max_abs_diff_inplace_flags_off"] = diff(without_inplace_flags(net64))
    else:
        row["max_abs_diff"] = diff(net64)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model names to run (default: all)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/torch_module_gradcam"))
    parser.add_argument("--rows-from", help="rebuild the report from the rows a run printed "
                        "(its log) instead of running; --seconds: that run's total time")
    parser.add_argument("--seconds", type=float, default=float("nan"))
    args = parser.parse_args()
    if args.rows_from:
        import ast

        lines = Path(args.rows_from).read_text().splitlines()
        rows = [ast.literal_eval(ln) for ln in lines if ln.startswith("{'model'")]
        return report(rows, args.seconds, args.out)
    torch.set_num_threads(2)
    models = [("torchvision", n) for n in TORCHVISION] + [("timm", n) for n in TIMM]
    rows, start = [], time.perf_counter()
    for source, name in models:
        if args.only and name not in args.only:
            continue
        try:
            row = run(source, name)
        except Exception as exc:  # noqa: BLE001 - a model that fails is a row, not a stop
            row = {"model": f"{source}/{name}", "error": f"{type(exc).__name__}: {exc}"[:300]}
        rows.append(row)
        print(row, flush=True)
    report(rows, time.perf_counter() - start, args.out)


def report(rows: list[dict], seconds: float, out: str) -> None:
    equal = [r for r in rows if r.get("max_abs_diff", 1) <= TOL]
    in_place = [r for r in rows if r.get("in_place")]
    tv_equal = sum(r["model"].startswith("torchvision/") for r in equal)
    tv_all = sum(r["model"].startswith("torchvision/") for r in rows)
    in_place_text = "; ".join(
        f"{r['model']}: as given {r['max_abs_diff_as_given']:.1e}, modules' inplace flags off "
        f"{r['max_abs_diff_inplace_flags_off']:.1e}, layer output copied {r['max_abs_diff']:.1e}"
        for r in in_place) or "none"
    lines = [f"# bincam.explain on torch models vs pytorch-grad-cam\n",
             f"{machine_line()}; shared. Random weights, batch 2 at the native size; parity in "
             "float64 (mode positive vs ClassifierOutputTarget for logits 0 and 1, mode "
             "predicted vs BinaryLogitTarget(0)); times float32, one call each after a warm-up "
             f"(bincam: both logits from one forward; pytorch-grad-cam: one call per logit). "
             f"Total run {seconds:.0f} s. Times are single calls on a machine other jobs shared: "
             "indicative only.\n",
             f"**{len(equal)} of {len(rows)} equal within {TOL:g}** (torchvision "
             f"{tv_equal} of {tv_all}, timm {len(equal) - tv_equal} of {len(rows) - tv_all}); "
             f"differing: {len(rows) - len(equal)}.\n",
             "Models that change the layer's output in place after it returned (pytorch-grad-cam"
             "'s hook keeps that tensor on a CPU, so it pairs the changed activations with the "
             "gradients of the unchanged ones; the reference is then pytorch-grad-cam with the "
             f"layer's output copied after its hook, marked *): {in_place_text}.\n",
             "| model | layer | tokens | size | path | max abs diff | bincam s | "
             "pytorch-grad-cam s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error']} | | | | | | |")
            continue
        diff = f"{r['max_abs_diff']:.1e}"
        if r.get("in_place"):
            diff += f"* (as given: {r['max_abs_diff_as_given']:.1e})"
        lines.append(f"| {r['model']} | {r['layer']} | {r['tokens']} | {r['size']} | "
                     f"{r['path']} | {diff} | {r['bincam_s']:.3f} | {r['gradcam_s']:.3f} |")
    write_report(out, "\n".join(lines) + "\n",
                 {"machine": machine_info(), "tolerance": TOL, "rows": rows,
                  "equal": len(equal), "in_place": [r["model"] for r in in_place]})


if __name__ == "__main__":
    main()
