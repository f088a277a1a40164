"""Checks of an explaining file: its epilogue subgraph against bincam's core (NumPy, float64) on
the file's own activations and gradients, for fresh random inputs.

A copy of the file also outputs ``activations`` and ``gradients`` (the factored channel weights
are read from the file), so the core computes the CAM method, the epilogue and PE from exactly
the tensors the graph used: what is left is the subgraph's float32 rounding.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bincam.core.energy import MaskEnergy
from bincam.core.explanation import explain_outputs
from bincam.core.model_info import onnx_info
from bincam.export.explain_graph import FACTORED_WEIGHTS

# float32 rounding in a map whose positive range is small next to its terms (XGrad-CAM's signed
# channel sums, say) is magnified by the min-max: where the core's own pipeline in float32 NumPy
# is further off than these limits, the limit is FLOOR_FACTOR times that "float32 floor"
LIMITS = {"maps max abs": 1e-4, "PE max abs": 1e-4, "uint8 levels": 1, "float16 max abs": 2e-3}
FLOOR_FACTOR = 4


def with_inputs_of_epilogue(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of an explaining file that also outputs ``activations`` (and dense ``gradients``)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    info = onnx_info(model, "the explaining file")
    extra = ["activations"] + (["gradients"] if info.gradient_layout == "dense" else [])
    for name in extra:
        out.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return out


def epilogue_parity(model: onnx.ModelProto, masks: dict[str, np.ndarray],
                    batches: tuple[int, ...] = (1, 5), seed: int | None = None,
                    floor: bool = False) -> dict[str, float]:
    """Worst differences between the file's outputs and the core's, over random batches.
    ``floor``: also the core's own pipeline in float32 against float64 on the same tensors
    (``float32 floor: …``), what float32 arithmetic alone costs."""
    from bincam.core.preprocess import model_input, preprocessing_of
    from bincam.runtime.ort_engine import session_options

    import onnxruntime as ort

    info = onnx_info(model, "the explaining file")
    spec, names, size = info.explain, info.attributes, info.image_size
    prep = preprocessing_of(info)
    probe = with_inputs_of_epilogue(model)
    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    weights = next((numpy_helper.to_array(i) for i in model.graph.initializer
                    if i.name == FACTORED_WEIGHTS), None)
    with_mask = spec["energy_attributes"]
    rng = np.random.default_rng(seed)
    worst: dict[str, float] = {}
    for batch in batches:
        x = rng.random((batch, 3, size, size), dtype=np.float32)
        got = dict(zip(outputs, session.run(None, {info.input_name: model_input(x, prep)})))
        tensors = {"logits": got["logits"], "activations": got["activations"]}
        tensors.update({"gradients": got["gradients"]} if weights is None else
                       {"channel_weights": weights})
        ref = explain_outputs(info, tensors, names, spec["method"], spec["mode"], size)
        maps = ref.heatmaps(spec["map_size"][0]).astype(np.float64)
        figures = {}
        if spec["map_dtype"] == "uint8":
            levels = np.floor(255 * maps + 0.5)
            figures["uint8 levels"] = np.abs(got["heatmaps"].astype(np.float64) - levels).max()
        elif spec["map_dtype"] == "float16":
            figures["float16 max abs"] = np.abs(got["heatmaps"].astype(np.float64) - maps).max()
        else:
            figures["maps max abs"] = np.abs(got["heatmaps"] - maps).max()
        if with_mask:
            k = [names.index(n) for n in with_mask]
            stack = np.stack([masks[n] for n in with_mask])
            pe = MaskEnergy(stack, ref.raw.shape[-2:])(ref.raw[:, k])
            figures["PE max abs"] = np.abs(got["energy"][:, k] - pe).max()
            others = [i for i in range(len(names)) if i not in k]
            if others and not np.isnan(got["energy"][:, others]).all():
                figures["PE max abs"] = np.inf  # an attribute without a mask must give NaN
        if floor:
            figures.update(_float32_floor(info, tensors, ref, masks, with_mask))
        if "raw_maps" in got:
            scale = max(np.abs(ref.raw).max(), 1e-30)
            figures["raw maps max abs / max |raw|"] = np.abs(got["raw_maps"] - ref.raw).max() / scale
        for name, value in figures.items():
            worst[name] = max(worst.get(name, 0.0), float(value))
    return worst


def explain_checks(model: onnx.ModelProto, masks: dict[str, np.ndarray],
                   seed: int | None = None) -> list:
    """``epilogue_parity`` as export checks, each against its limit."""
    from bincam.export.checks import Check

    checks = []
    figures = epilogue_parity(model, masks, seed=seed, floor=True)
    for name, value in figures.items():
        if name not in LIMITS:
            continue
        limit, floor = LIMITS[name], figures.get(f"float32 floor: {name}", 0.0)
        note = "core NumPy float64 on the file's own tensors"
        if FLOOR_FACTOR * floor > limit:
            limit = FLOOR_FACTOR * floor
            note += f"; {FLOOR_FACTOR}× the core's own float32 error {floor:.1e}"
        checks.append(Check(f"epilogue parity: {name}", value <= limit,
                            f"{value:.2e} (limit {limit:.2g}; {note})"))
    return checks


def _float32_floor(info, tensors: dict, ref, masks: dict, with_mask: list[str]) -> dict:
    """The core's method and epilogue in float32 NumPy against its float64 result ``ref``."""
    from bincam.core.epilogue import epilogue
    from bincam.core.methods import factored_gradients, raw_maps

    spec = info.explain
    s = ref.signs.astype(np.float32)
    a = tensors["activations"].astype(np.float32)
    if "gradients" in tensors:
        g = s[:, :, None, None, None] * tensors["gradients"].astype(np.float32)
    else:
        g = factored_gradients(a, s, tensors["channel_weights"], info.mask_positive)
        g.sign, g.weight = g.sign.astype(np.float32), g.weight.astype(np.float32)
        g.mask = None if g.mask is None else g.mask.astype(np.float32)
    raw = raw_maps(spec["method"], a, g)
    size = spec["map_size"][0]
    out = {"float32 floor: maps max abs": float(np.abs(
        epilogue(raw, size, np.float32) - ref.heatmaps(size)).max())}
    if with_mask:
        k = [info.attributes.index(n) for n in with_mask]
        energy = MaskEnergy(np.stack([masks[n] for n in with_mask]), ref.raw.shape[-2:])
        out["float32 floor: PE max abs"] = float(np.abs(energy(raw[:, k])
                                                        - energy(ref.raw[:, k])).max())
    return out
