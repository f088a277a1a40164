"""Checks at export: ONNX checker, strict shape inference, TensorRT lint, parity with the torch
engine on fresh random inputs, and input dependence (two inputs ⇒ two different gradients — what
a naive export that bakes gradients in as constants fails).

The TensorRT lint depends on the file's ``target``: ``ort`` (the default; ONNX Runtime runs every
valid ONNX graph) makes its findings a warning, ``trt`` and ``any`` (the file must also build as a
TensorRT engine) a refusal that names the node, the reason and the way out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from bincam.core.fidelity import pe_abs_diff
from bincam.export.lint import lint_tensorrt

MASK_FLIP_LIMIT = 5e-2  # worst image: one ReLU unit within float32 rounding of 0 may flip
TOLERANCES = {"logits max abs": 1e-4, "gradients rel L2": 1e-5,
              "gradients rel L2 (own activations)": 1e-5, "final maps max abs": 1e-4,
              "PE max abs": 1e-4, "prediction flips": 0}


TARGETS = ("ort", "trt", "any")
LINT = "TensorRT operator lint"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False   # passed, but with a finding the user should read
    advice: str = ""        # for a failed check: what went wrong and what to do, in one line


def check_target(target: str) -> str:
    if target not in TARGETS:
        from bincam.errors import BincamError

        raise BincamError(f"--runtime must be one of {', '.join(TARGETS)} (ort: ONNX Runtime; "
                          f"trt: TensorRT; any: both), got {target!r}")
    return target


def lint_check(model: onnx.ModelProto, target: str = "ort") -> Check:
    """The TensorRT lint as a check: passed; a warning for ``target`` ``ort``; else failed,
    with the first problem (node and reason) and the way out as ``advice``."""
    problems = lint_tensorrt(model)
    if not problems:
        return Check(LINT, True, f"{len({n.op_type for n in model.graph.node})} op types, all "
                                 "supported")
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    found = "; ".join(problems[:3]) + (f"; … {len(problems) - 3} more" if len(problems) > 3
                                       else "")
    if check_target(target) == "ort":
        return Check(LINT, True, f"{found} — TensorRT could not build this file; ONNX Runtime "
                     "runs it (--runtime trt makes this a refusal)", warning=True)
    return Check(LINT, False, found, advice=(
        f"TensorRT cannot build this file: {problems[0]}{more}; export with --runtime ort for "
        "ONNX Runtime, or change the model so that TensorRT supports its ops"))


def structural_checks(model: onnx.ModelProto, target: str = "ort") -> list[Check]:
    """ONNX checker, strict shape inference, and the TensorRT lint for ``target``."""
    check_target(target)
    out = []
    try:
        onnx.checker.check_model(model, full_check=True)
        out.append(Check("onnx.checker (full)", True, "passed"))
    except onnx.checker.ValidationError as exc:
        out.append(Check("onnx.checker (full)", False, str(exc).splitlines()[0]))
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                     data_prop=True)
        batch = [o.type.tensor_type.shape.dim[0].dim_param for o in inferred.graph.output
                 if o.name != "channel_weights"]
        ok = all(batch)
        out.append(Check("strict shape inference", ok,
                         f"symbolic batch axis: {', '.join(batch)}" if ok else
                         "an output lost its symbolic batch axis"))
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError subclasses
        out.append(Check("strict shape inference", False, str(exc).splitlines()[0][:160]))
    out.append(lint_check(model, target))
    return out


def _engine_gradients(engine, out) -> np.ndarray:
    """Dense ``∂z/∂A [B,K,C,h,w]`` from an engine's outputs (the factored form expanded)."""
    from bincam.core.methods import factored_gradients

    if "gradients" in out:
        return out["gradients"]
    a = out["activations"]
    ones = np.ones(out["logits"].shape)
    return factored_gradients(a, ones, out["channel_weights"],
                              engine.info.mask_positive).dense(a.shape[-2:])


def replayed_gradients(torch_model, layer: str, x: np.ndarray, activations: np.ndarray,
                       indices: list[int]) -> np.ndarray:
    """``∂z_k/∂A [B,K,C,h,w]`` by float64 autograd through the torch net's part after ``layer``,
    fed with the ONNX engine's own activations ``A``: the reference for the gradient subgraph alone,
    free of the forward's float32 rounding."""
    import copy

    import torch

    from bincam.nets import cam_module

    net64 = copy.deepcopy(torch_model).double().eval()
    leaf = torch.from_numpy(activations).double().requires_grad_(True)
    handle = cam_module(net64, layer).register_forward_hook(lambda _m, _i, _o: leaf)
    try:
        logits = net64(torch.from_numpy(x).double())
    finally:
        handle.remove()
    grads = [torch.autograd.grad(logits[:, k].sum(), leaf, retain_graph=True)[0] for k in indices]
    return torch.stack(grads, 1).numpy()


def parity(engine, torch_model, batch: int = 4, runs: int = 2, seed: int | None = None,
           method: str = "gradcam") -> dict[str, float]:
    """Worst-image differences between the ONNX engine and the torch engine on ``runs`` batches of
    ``batch`` fresh random images.

    Also ``… (median image)`` figures: a ReLU pre-activation within float32 rounding of 0 (at a
    pre-ReLU tap, or between the CAM layer and the head, e.g. ResNet ``layer3``) can take opposite
    signs in two correct float32 engines; that flips one mask unit and moves that image's gradient
    by ~1e-3 and its map by up to ~1e-3. ``gradients rel L2 (own activations)`` isolates the
    appended gradient subgraph: it compares with float64 autograd from the engine's activations.
    """
    import torch

    from bincam.cam.gradients import layer_gradients
    from bincam.runtime import open_engine

    def rel_l2(a, b):
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)

    size, layer = engine.info.image_size, engine.info.target_layer
    rng = np.random.default_rng(seed)
    idx = _torch_indices(engine, torch_model)
    per_image: dict[str, list] = {}
    reference = open_engine(torch_model, "torch", layer=layer)
    for _ in range(runs):
        x = rng.random((batch, 3, size, size), dtype=np.float32)
        out = engine.run(x)
        ref = layer_gradients(torch_model, torch.from_numpy(x), layer, idx, closed_form=False)
        g_ort = _engine_gradients(engine, out)
        g_own = replayed_gradients(torch_model, layer, x, out["activations"], idx)
        ours = engine.explain(x, method=method)
        theirs = reference.explain(x, method=method, attributes=engine.attributes)
        figures = {
            "logits max abs": np.abs(out["logits"] - ref.logits.numpy()[:, idx]).max(axis=1),
            "gradients rel L2": rel_l2(g_ort, ref.grads.numpy()),
            "gradients rel L2 (own activations)": rel_l2(g_ort, g_own),
            "final maps max abs": np.abs(ours.heatmaps() - theirs.heatmaps()).reshape(
                batch, -1).max(axis=1),
            "PE max abs": pe_abs_diff(ours.proportional_energy(),
                                        theirs.proportional_energy()).max(axis=1),
            "prediction flips": (ours.predictions != theirs.predictions).sum(axis=1),
        }
        for name, values in figures.items():
            per_image.setdefault(name, []).extend(values.tolist())
    result = {name: float(np.max(values)) for name, values in per_image.items()}
    result.update({f"{name} (median image)": float(np.median(values))
                   for name, values in per_image.items()})
    return result


def _torch_indices(engine, torch_model) -> list[int]:
    """The torch net's logit index of each of the engine's attributes (a file may hold a
    subset)."""
    from bincam.runtime.torch_engine import model_attributes

    names = model_attributes(torch_model)
    return [names.index(a) for a in engine.attributes]


def input_dependence(engine, torch_model=None, seed: int | None = None) -> tuple[float, float | None]:
    """Relative L2 difference of the gradients of two different random inputs, from the ONNX
    engine and (if given) from torch. A gradient that truly does not depend on the input (a
    post-ReLU tap before an affine head) is constant in both."""
    size = engine.info.image_size or 224
    rng = np.random.default_rng(seed)
    a, b = (rng.random((1, 3, size, size), dtype=np.float32) for _ in range(2))

    def rel(ga, gb):
        return float(np.linalg.norm(ga - gb) / max(np.linalg.norm(ga), 1e-30))

    onnx_diff = rel(*(_engine_gradients(engine, engine.run(x)) for x in (a, b)))
    if torch_model is None:
        return onnx_diff, None
    import torch

    from bincam.cam.gradients import layer_gradients

    idx = _torch_indices(engine, torch_model)
    ref = [layer_gradients(torch_model, torch.from_numpy(x), engine.info.target_layer, idx,
                           closed_form=False).grads.numpy() for x in (a, b)]
    return onnx_diff, rel(*ref)


def parity_limit(name: str, kink_free: bool) -> float:
    """The limit for one ``parity`` figure. Strict: every median-image figure, logits and flips
    on every image, and the gradient subgraph against its own-activation reference on every image
    when no ReLU lies between the CAM layer and the logits beyond the tap's own (``kink_free``:
    an affine head). Other worst-image figures: ``MASK_FLIP_LIMIT`` (see ``parity``)."""
    base = name.replace(" (median image)", "")
    strict = (name != base or base in ("logits max abs", "prediction flips")
              or (kink_free and base == "gradients rel L2 (own activations)"))
    return TOLERANCES[base] if strict else MASK_FLIP_LIMIT


REDUCED_PRECISION_LIMITS = {"raw-map Pearson (mean)": 0.999, "PE max abs": 0.01,
                            "prediction flip rate": 0.001}


def precision_fidelity(engine, torch_model, images: np.ndarray) -> dict[str, float]:
    """A reduced-precision graph (ONNX Runtime) against the float32 torch engine on ``images``
    (uint8 ``[N,S,S,3]``): prediction flip rate, and over the maps whose prediction agrees,
    Pearson of raw maps and PE differences."""
    from bincam.core.fidelity import pearson
    from bincam.data.batches import to_batch
    from bincam.runtime import explain

    x = to_batch(images)
    ours = engine.explain(x)
    theirs = explain(torch_model, x, layer=engine.info.target_layer,
                     attributes=engine.attributes)
    flipped = ours.predictions != theirs.predictions
    same = ~flipped  # a flipped prediction explains the other class: its map is not comparable
    r = pearson(ours.raw, theirs.raw)[same]
    pe = pe_abs_diff(ours.proportional_energy(), theirs.proportional_energy())[same]
    return {"raw-map Pearson (mean)": float(r.mean()), "raw-map Pearson (min)": float(r.min()),
            "PE max abs": float(pe.max()), "PE mean abs": float(pe.mean()),
            "prediction flip rate": float(flipped.mean())}


def run_checks(model: onnx.ModelProto, torch_model=None, target: str = "ort") -> list[Check]:
    """All checks: structure (the TensorRT lint a refusal only for ``target`` ``trt`` or
    ``any``); the torch-free self-checks (finite differences and tie conventions, or the
    factored head identity); parity with torch (or, for a reduced-precision graph, fidelity on
    synthetic faces) when the torch net is at hand; input dependence."""
    from bincam.runtime import open_engine

    checks = structural_checks(model, target)
    with open_engine(model.SerializeToString(), "ort") as engine:
        own = _self_checks(model, engine)
        self_checked = bool(own) and all(c.ok for c in own)
        return checks + own + _engine_checks(engine, torch_model, self_checked)


def _self_checks(model: onnx.ModelProto, engine) -> list[Check]:
    from bincam.export.selfcheck import LIMITS, WARN_ONLY, self_checks

    if engine.info.precision != "fp32":
        return []  # finite differences need float32 resolution; fidelity covers reduced graphs
    checks = []
    for name, value in self_checks(model, engine).items():
        within = value <= LIMITS[name]
        detail = f"{value:.2e} (limit {LIMITS[name]:g}; ONNX Runtime on the file, no torch)"
        if name in WARN_ONLY:
            checks.append(Check(f"self-check: {name}", True, detail + ("" if within else
                                "; a kink downstream of the tensor, or a convention: not a "
                                "refusal on its own"), warning=not within))
        else:
            checks.append(Check(f"self-check: {name}", within, detail,
                                advice=SELF_CHECK_ADVICE))
    return checks


# a failed self-check: bincam's appended graph disagrees with the file itself
SELF_CHECK_ADVICE = ("the appended gradients disagree with the file's own forward pass: explain "
                     "another tensor (--activation; --list-activations lists them) and report "
                     "the model to bincam")


def _engine_checks(engine, torch_model, self_checked: bool) -> list[Check]:
    """Parity or reduced-precision fidelity, then input dependence, on the ORT engine."""
    checks = []
    if torch_model is not None and engine.info.precision != "fp32":
        from bincam.data.batches import synthetic_faces

        faces = synthetic_faces(16, engine.info.image_size, seed=1)
        for name, value in precision_fidelity(engine, torch_model, faces).items():
            limit = REDUCED_PRECISION_LIMITS.get(name)
            ok = limit is None or (value >= limit if "Pearson" in name else value <= limit)
            checks.append(Check(f"{engine.info.precision} fidelity: {name}", ok,
                                f"{value:.6g}" + (f" (limit {limit:g})" if limit else "")))
        torch_model = None  # float32 parity limits do not apply; input dependence still does
    elif torch_model is not None:
        kink_free = engine.info.target_layer in getattr(torch_model, "affine_heads", {})
        for name, value in parity(engine, torch_model).items():
            limit = parity_limit(name, kink_free)
            checks.append(Check(f"parity: {name}", value <= limit, f"{value:.2e} (limit {limit:g})"))
    if engine.info.gradient_layout == "factored":
        return checks  # a constant channel weight is the point; the self-check tested it
    dep, truth = input_dependence(engine, torch_model)
    detail = f"gradients of two inputs differ by {dep:.2e} (relative L2)"
    if truth is not None:
        ok, detail = (dep > 1e-6) == (truth > 1e-6), f"{detail}; torch: {truth:.2e}"
    else:  # constant gradients are right only where the finite differences agree with them
        ok = dep > 1e-6 or self_checked
        if dep <= 1e-6:
            detail += ("; constant, as the finite differences confirm" if ok else
                       "; constant, and not confirmed by finite differences")
    checks.append(Check("input dependence", ok, detail))
    return checks
