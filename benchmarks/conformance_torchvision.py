"""Conformance of `bincam export --onnx` on torchvision classifiers: for each model (random
weights, 40 classes, small inputs) and each exporter (`torch.onnx.export` legacy TorchScript and
dynamo), export the model, pick its usual Grad-CAM tensor from the ONNX graph, append the
gradients with `export_onnx_classifier`, run bincam's own checks (`run_checks`, torch-free), and
compare the gradients of every logit with float64 torch autograd at the engine's own activations;
time the gradient graph against the forward pass with ONNX Runtime on this CPU.

    python benchmarks/conformance_torchvision.py --exporters legacy \
        --out benchmarks/results/conformance_torchvision.md
    python benchmarks/conformance_torchvision.py --models resnet18,vit_tiny --exporters dynamo \
        --merge --out benchmarks/results/conformance_torchvision.md

A row is "silently wrong" when every check passes but the gradients are off by more than
`SILENT_LIMIT` (relative L2, worst image): such rows are marked in the table and make the script
exit with status 1.

The reference: the torch net is run in float64 with a forward hook that replaces the output of
the module whose output *is* the ONNX CAM tensor (found by value, among modules called once) by a
leaf tensor holding the ONNX engine's own activations, so the comparison measures the appended
gradient subgraph alone, free of the forward's float32 rounding. Factored layouts are expanded
to dense first (``W[k,c]·1[A>0]`` where ``mask_positive``, else ``W[k,c]``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

SILENT_LIMIT = 1e-3        # relative L2 of the gradients, worst image: above this with all checks ok
NUM_CLASSES = 40
EXPORTERS = ("legacy", "dynamo")

DEFAULT_MODELS = (
    "resnet18", "resnet50", "vgg11_bn", "alexnet", "squeezenet1_0", "densenet121", "googlenet",
    "inception_v3", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_v2_s",
    "mnasnet0_5", "regnet_y_400mf", "shufflenet_v2_x0_5", "resnext50_32x4d", "wide_resnet50_2",
    "convnext_tiny", "maxvit_t", "vit_tiny", "swin_tiny")

# the smallest input a model (or an exporter of it) takes when the requested size is smaller
MIN_SIZE = {"inception_v3": 96, "maxvit_t": 224, "vit_b_16": 224, "vit_b_32": 224,
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

    def hook(name):
        def post(_module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if same(output):
                matches.setdefault(name, set()).add("output")
            if inputs and same(inputs[0]):
                matches.setdefault(name, set()).add("input")
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
    _, _, name, kind = min(found)
    return name, kind


def reference_gradients(model, site, x: np.ndarray, activations: np.ndarray):
    """``(logits [B,K], ∂z_k/∂A [B,K,*A])`` by float64 autograd, with the CAM tensor set to the
    engine's ``activations`` (a leaf) at ``site``."""
    import torch

    name, kind = site
    net = copy.deepcopy(model).double().eval()
    module = net.get_submodule(name)
    leaf = torch.from_numpy(activations).double().requires_grad_(True)
    if kind == "output":
        handle = module.register_forward_hook(lambda _m, _i, _o: leaf)
    else:
        handle = module.register_forward_pre_hook(lambda _m, inputs: (leaf, *inputs[1:]))
    try:
        logits = net(torch.from_numpy(x).double())
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


def relative_errors(g: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Worst image's relative L2 over all logits, and worst (image, logit)'s."""
    b, k = ref.shape[:2]
    diff, base = (g - ref).reshape(b, k, -1), ref.reshape(b, k, -1)
    per_image = np.linalg.norm(diff.reshape(b, -1), axis=1) / np.maximum(
        np.linalg.norm(base.reshape(b, -1), axis=1), 1e-300)
    per_logit = np.linalg.norm(diff, axis=2) / np.maximum(np.linalg.norm(base, axis=2), 1e-300)
    return float(per_image.max()), float(per_logit.max())


# -------------------------------------------------------------------------------------- one row

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:200]


def _median_time(fn, runs: int) -> float:
    fn()  # warm-up (also builds the forward-only session)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def conformance_row(name: str, exporter: str, size: int = 64, threads: int = 1,
                    timing_batch: int = 8, timing_runs: int = 5, workdir: Path | None = None,
                    checks: bool = True) -> dict:
    """One (model, exporter) row: export, CAM tensor, bincam export + checks, gradient error
    against float64 torch autograd, gradient/forward time ratio. Never raises for a model's
    problem: the row's ``status`` and ``detail`` say what happened."""
    import torch

    from bincam.errors import BincamError
    from bincam.export.checks import run_checks
    from bincam.export.model import export_onnx_classifier
    from bincam.runtime import open_engine

    torch.set_num_threads(threads)
    family = family_of(name)
    row = {"model": name, "exporter": exporter, "family": family, "size": None,
           "cam_tensor": None, "torch_site": None, "layout": None, "status": None, "detail": "",
           "failed_checks": [], "checks": [], "grad_rel_err": None, "grad_rel_err_per_logit": None,
           "logits_max_rel_vs_torch": None, "time_run_s": None, "time_forward_s": None,
           "time_ratio": None, "silently_wrong": False, "seconds": {}}
    started = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(dir=workdir)
    path = Path(tmp.name) / f"{name}-{exporter}.onnx"
    try:
        # 1. the torch net and its ONNX export (at the smallest size that works)
        t = time.perf_counter()
        errors = []
        for size_try in sizes_for(name, size):
            try:
                model = build_model(name, size_try)
                with torch.no_grad():
                    model(torch.rand(1, 3, size_try, size_try))
                export_torch(model, size_try, exporter, path)
                row["size"] = size_try
                break
            except Exception as exc:  # noqa: BLE001 - any exporter failure is a row's result
                errors.append(f"{size_try}px: {exc.__class__.__name__}: {_first_line(exc)}")
        row["seconds"]["torch export"] = round(time.perf_counter() - t, 2)
        if row["size"] is None:
            row.update(status="exporter failed", detail="; ".join(errors))
            return row
        if errors:
            row["detail"] = f"at {row['size']} px ({'; '.join(errors)})"

        # 2. the CAM tensor
        import onnx

        source = onnx.load(str(path))
        try:
            row["cam_tensor"] = cam_tensor(source, family)
        except LookupError as exc:
            row.update(status="no CAM tensor", detail=str(exc))
            return row
        logits_name = source.graph.output[0].name
        del source

        # 3. bincam: gradients appended, then its own checks
        t = time.perf_counter()
        try:
            exported = export_onnx_classifier(path, row["cam_tensor"], logits_name)
        except BincamError as exc:
            row.update(status="refused", detail=_first_line(exc))
            return row
        except Exception as exc:  # noqa: BLE001 - not a BincamError: a bincam defect
            row.update(status="crashed", detail=f"export_onnx_classifier raised "
                       f"{exc.__class__.__name__}: {_first_line(exc)}",
                       traceback=traceback.format_exc(limit=6))
            return row
        finally:
            row["seconds"]["bincam export"] = round(time.perf_counter() - t, 2)
        if checks:
            t = time.perf_counter()
            try:
                results = run_checks(exported)
            except Exception as exc:  # noqa: BLE001 - a check that cannot run fails loudly
                results = None
                row.update(status="checks crashed", detail=f"run_checks raised "
                           f"{exc.__class__.__name__}: {_first_line(exc)}",
                           traceback=traceback.format_exc(limit=6))
            row["seconds"]["checks"] = round(time.perf_counter() - t, 2)
            if results is not None:
                row["checks"] = [{"name": c.name, "ok": bool(c.ok), "detail": c.detail}
                                 for c in results]
                row["failed_checks"] = [c.name for c in results if not c.ok]
                row["status"] = "checks failed" if row["failed_checks"] else "ok"
                if row["failed_checks"]:
                    row["detail"] = "; ".join(f"{c.name}: {c.detail}" for c in results
                                              if not c.ok)[:400]
        else:
            row["status"] = "ok (unchecked)"

        # 4. gradients vs float64 torch autograd at the engine's own activations
        t = time.perf_counter()
        try:
            with open_engine(exported.SerializeToString(), "ort", threads=threads) as engine:
                row["layout"] = engine.info.gradient_layout
                rng = np.random.default_rng(0)
                s = row["size"]
                x = np.concatenate([rng.random((2, 3, s, s), dtype=np.float32),
                                    np.full((1, 3, s, s), 0.5, np.float32)])  # flat: ties
                out = engine.run(x)
                g = dense_gradients(engine, out)
                site = torch_site(model, torch.from_numpy(x), out["activations"])
                if site is None:
                    row["reference"] = ("no torch module's output or input equals the ONNX "
                                        "CAM tensor")
                else:
                    row["torch_site"] = f"{site[0]} ({site[1]})"
                    ref_logits, ref = reference_gradients(model, site, x.astype(np.float64),
                                                          out["activations"])
                    if g.shape != ref.shape:
                        row["reference"] = f"shape {list(g.shape)} vs torch {list(ref.shape)}"
                    elif not np.any(ref):
                        row["reference"] = "torch's gradients are all zero: nothing to compare"
                    else:
                        row["grad_rel_err"], row["grad_rel_err_per_logit"] = \
                            relative_errors(g, ref)
                        # how much the true gradient changes between the two random images
                        # (0 for a factored head without a ReLU mask: constant by nature)
                        row["reference_input_variation"] = float(
                            np.linalg.norm(ref[0] - ref[1]) / np.linalg.norm(ref[1]))
                    with torch.no_grad():
                        z = model(torch.from_numpy(x)).numpy()
                    row["logits_max_rel_vs_torch"] = float(
                        np.abs(out["logits"] - z).max() / max(np.abs(z).max(), 1e-30))
                row["seconds"]["reference"] = round(time.perf_counter() - t, 2)

                # 5. gradient graph vs forward, ORT CPU, batch 8
                t = time.perf_counter()
                xb = np.random.default_rng(1).random((timing_batch, 3, s, s), dtype=np.float32)
                row["time_run_s"] = _median_time(lambda: engine.run(xb), timing_runs)
                row["time_forward_s"] = _median_time(lambda: engine.run_forward(xb), timing_runs)
                row["time_ratio"] = row["time_run_s"] / row["time_forward_s"]
                row["seconds"]["timing"] = round(time.perf_counter() - t, 2)
        except Exception as exc:  # noqa: BLE001 - report, do not stop the run
            row["reference"] = f"{exc.__class__.__name__}: {_first_line(exc)}"
            row.setdefault("traceback", traceback.format_exc(limit=6))
        err = row["grad_rel_err"]
        row["silently_wrong"] = bool(row["status"] == "ok" and err is not None and
                                     not err <= SILENT_LIMIT)  # NaN counts as wrong
        return row
    finally:
        tmp.cleanup()
        row["seconds"]["total"] = round(time.perf_counter() - started, 2)


def run_conformance(models, exporters, size: int = 64, threads: int = 1, isolate: bool = False,
                    row_timeout: float = 900.0, log=print, **options) -> list[dict]:
    """Rows for every (model, exporter); ``isolate`` runs each in a child process (a crash or a
    hang of one model then costs only its row)."""
    rows = []
    for name in models:
        for exporter in exporters:
            if isolate:
                row = _isolated_row(name, exporter, size, threads, row_timeout, options)
            else:
                row = conformance_row(name, exporter, size, threads, **options)
            rows.append(row)
            if log:
                log(_summary_line(row))
    return rows


def _isolated_row(name, exporter, size, threads, timeout, options) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--row", f"{name}:{exporter}",
               "--size", str(size), "--threads", str(threads), "--row-out", str(out),
               "--timing-runs", str(options.get("timing_runs", 5)),
               "--timing-batch", str(options.get("timing_batch", 8))]
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"model": name, "exporter": exporter, "family": family_of(name),
                    "status": "timed out", "detail": f"no result within {timeout:.0f} s",
                    "silently_wrong": False, "seconds": {"total": round(timeout, 1)}}
        if out.is_file():
            return json.loads(out.read_text())
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"model": name, "exporter": exporter, "family": family_of(name),
                "status": "crashed", "silently_wrong": False,
                "detail": f"child exited with {proc.returncode}: {' | '.join(tail)[:300]}",
                "seconds": {"total": round(time.perf_counter() - started, 1)}}


# --------------------------------------------------------------------------------------- report

def _fmt(value, spec=".1e") -> str:
    return "–" if value is None else format(value, spec)


def _status_cell(row) -> str:
    status = row["status"]
    if row.get("silently_wrong"):
        return f"**⚠ SILENTLY WRONG** (checks ok, error {row['grad_rel_err']:.1e})"
    if status == "ok":
        return "ok"
    if status == "checks failed":
        return f"checks failed: {', '.join(row.get('failed_checks', []))}"
    return f"{status}: {row.get('detail', '')}"


def _summary_line(row) -> str:
    return (f"{row['model']:>20} {row['exporter']:>6} {row.get('size') or '-':>4}px "
            f"{row.get('layout') or '-':>8} err {_fmt(row.get('grad_rel_err'))} "
            f"ratio {_fmt(row.get('time_ratio'), '.2f')} [{row['seconds'].get('total', 0):.0f} s] "
            f"{_status_cell(row)[:150]}")


def summarize(rows: list[dict]) -> dict:
    def count(status):
        return sum(r["status"] == status for r in rows)

    refusals = {}
    for r in rows:
        if r["status"] == "refused":
            refusals.setdefault(r["detail"], []).append(f"{r['model']}/{r['exporter']}")
    return {"rows": len(rows), "ok": count("ok"), "refused": count("refused"),
            "refusal reasons": refusals, "checks failed": count("checks failed"),
            "checks crashed": count("checks crashed"), "crashed": count("crashed"),
            "exporter failed": count("exporter failed"), "no CAM tensor": count("no CAM tensor"),
            "timed out": count("timed out"),
            "silently wrong": sum(bool(r.get("silently_wrong")) for r in rows),
            "unverified ok": sum(r["status"] == "ok" and r.get("grad_rel_err") is None
                                 for r in rows)}


def markdown(record: dict) -> str:
    s = record["summary"]
    lines = [
        "# bincam export --onnx on torchvision classifiers: conformance", "",
        f"Machine: {record['machine_line']}. Produced by `benchmarks/conformance_torchvision.py` "
        f"({record['settings']['command']}); {record['settings']['wall_s']:.0f} s of wall time "
        "for the rows run last.", "",
        f"Random weights, {NUM_CLASSES} classes, opset 18, dynamic batch. *error*: relative L2 "
        "of the gradients of all logits (worst of 2 random images and 1 flat gray image) against "
        "float64 torch autograd at the ONNX engine's own activations (factored layouts expanded "
        f"to dense). *grad/fwd*: median of {record['settings']['timing_runs']} `engine.run` over "
        f"median `engine.run_forward`, ONNX Runtime CPU, batch {record['settings']['timing_batch']}"
        f", {record['settings']['threads']} thread(s). Checks: `run_checks` (structure, TensorRT "
        "lint, torch-free self-checks, input dependence). A row whose checks pass with an error "
        f"above {SILENT_LIMIT:g} is **silently wrong**.", "",
        f"Summary: {s['rows']} rows — {s['ok']} ok ({s['unverified ok']} of them without a torch "
        f"reference), {s['refused']} refused, {s['checks failed']} checks failed, "
        f"{s['checks crashed'] + s['crashed']} crashed, {s['exporter failed']} exporter failed, "
        f"{s['no CAM tensor']} without a CAM tensor, {s['timed out']} timed out; "
        f"**{s['silently wrong']} silently wrong**.", ""]
    if s["refusal reasons"]:
        lines += ["Refusals:", ""]
        lines += [f"- {reason} — {', '.join(where)}" for reason, where in
                  s["refusal reasons"].items()]
        lines.append("")
    lines += ["| model | exporter | px | CAM tensor (torch module) | layout | status | error | "
              "grad/fwd | s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        site = f" ({r['torch_site']})" if r.get("torch_site") else ""
        err = _fmt(r.get("grad_rel_err"))
        if r.get("grad_rel_err") is None and r.get("reference") and r["status"] not in (
                "refused", "exporter failed", "crashed", "no CAM tensor"):
            err = f"– ({r['reference'][:80]})"
        cell = _status_cell(r).replace("|", "\\|")
        lines.append(f"| {r['model']} | {r['exporter']} | {r.get('size') or '–'} | "
                     f"`{r.get('cam_tensor') or '–'}`{site} | {r.get('layout') or '–'} | "
                     f"{cell} | {err} | {_fmt(r.get('time_ratio'), '.2f')} | "
                     f"{r['seconds'].get('total', 0):.0f} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, record: dict) -> None:
    from bincam.files import write_atomic

    out = Path(out)
    write_atomic(out.with_suffix(".json"), (json.dumps(record, indent=1) + "\n").encode())
    write_atomic(out.with_suffix(".md"), markdown(record).encode())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="comma-separated torchvision model names (and vit_tiny, swin_tiny, "
                         "maxvit_tiny)")
    ap.add_argument("--skip", default="", help="comma-separated models to leave out")
    ap.add_argument("--exporters", default="legacy,dynamo")
    ap.add_argument("--size", type=int, default=64, help="input size where the model allows")
    ap.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads")
    ap.add_argument("--timing-batch", type=int, default=8)
    ap.add_argument("--timing-runs", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/conformance_torchvision.md",
                    help="MD file; the JSON goes beside it")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of an existing JSON for (model, exporter) pairs not run")
    ap.add_argument("--no-isolate", action="store_true",
                    help="run every row in this process (default: one child process per row)")
    ap.add_argument("--row-timeout", type=float, default=900.0, help="seconds per row (isolated)")
    ap.add_argument("--row", help=argparse.SUPPRESS)      # child mode: MODEL:EXPORTER
    ap.add_argument("--row-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.row:  # child process of an isolated run
        name, exporter = args.row.split(":")
        row = conformance_row(name, exporter, args.size, args.threads, args.timing_batch,
                              args.timing_runs)
        Path(args.row_out).write_text(json.dumps(row))
        return 0

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    skip = {m.strip() for m in args.skip.split(",") if m.strip()}
    models = [m.strip() for m in args.models.split(",") if m.strip() and m.strip() not in skip]
    exporters = [e.strip() for e in args.exporters.split(",") if e.strip()]
    bad = sorted(set(exporters) - set(EXPORTERS))
    if bad:
        ap.error(f"unknown exporter(s) {', '.join(bad)}; choose from {', '.join(EXPORTERS)}")
    started = time.perf_counter()
    rows = run_conformance(models, exporters, args.size, args.threads,
                           isolate=not args.no_isolate, row_timeout=args.row_timeout,
                           timing_batch=args.timing_batch, timing_runs=args.timing_runs)
    wall = time.perf_counter() - started
    out = Path(args.out)
    if args.merge and out.with_suffix(".json").is_file():
        old = json.loads(out.with_suffix(".json").read_text())["rows"]
        done = {(r["model"], r["exporter"]) for r in rows}
        rows = [r for r in old if (r["model"], r["exporter"]) not in done] + rows
        order = {m: i for i, m in enumerate(list(DEFAULT_MODELS) + models)}
        rows.sort(key=lambda r: (order.get(r["model"], len(order)), r["model"],
                                 EXPORTERS.index(r["exporter"])
                                 if r["exporter"] in EXPORTERS else 9))
    from bincam.machine import machine_info, machine_line

    info = machine_info()
    record = {"benchmark": "conformance_torchvision", "machine": info,
              "machine_line": machine_line(info),
              "settings": {"command": "python benchmarks/conformance_torchvision.py " +
                           " ".join(argv if argv is not None else sys.argv[1:]),
                           "size": args.size, "threads": args.threads,
                           "timing_batch": args.timing_batch, "timing_runs": args.timing_runs,
                           "silent_limit": SILENT_LIMIT, "wall_s": round(wall, 1)},
              "summary": summarize(rows), "rows": rows}
    write_outputs(out, record)
    s = record["summary"]
    print(f"{s['rows']} rows: {s['ok']} ok, {s['refused']} refused, {s['checks failed']} checks "
          f"failed, {s['crashed'] + s['checks crashed']} crashed, {s['exporter failed']} exporter "
          f"failed, {s['silently wrong']} SILENTLY WRONG; {wall:.0f} s; wrote "
          f"{out.with_suffix('.md')} and {out.with_suffix('.json')}")
    silent = [f"{r['model']}/{r['exporter']}" for r in rows if r.get("silently_wrong")]
    if silent:
        print(f"SILENTLY WRONG: {', '.join(silent)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
