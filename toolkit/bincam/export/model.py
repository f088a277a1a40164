"""``bincam export``: a checkpoint (or any ONNX classifier) → one ONNX file with gradients.

Outputs: ``logits [B,K]``, ``activations [B,C,h,w]`` and either ``gradients [B,K,C,h,w]`` (dense,
from the VJP pass) or, for an affine head, ``channel_weights [K,C]`` (factored: ``W_eff/(h·w)``;
consumers re-apply ``1[A > 0]``), so the K-fold tensor is not materialised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bincam.errors import BincamError
from bincam.core.model_info import ModelInfo, onnx_info, write_metadata
from bincam.core.preprocess import Preprocessing
from bincam.data.fit import check_fit
from bincam.export.input_spec import image_input
from bincam.files import atomic_path
from bincam.export.heads import TARGET_LOGITS, append_head, decisions, resolve_head
from bincam.export.names import rename_tensor
from bincam.export.opset import model_opset
from bincam.export.vjp import append_gradients

LAYOUTS = ("auto", "dense", "factored")


def _add_factored(model: onnx.ModelProto, weights: np.ndarray) -> None:
    model.graph.initializer.append(numpy_helper.from_array(weights.astype(np.float32),
                                                           "bincam/channel_weights"))
    model.graph.node.append(helper.make_node("Identity", ["bincam/channel_weights"],
                                             ["channel_weights"], name="bincam/factored"))
    model.graph.output.append(helper.make_tensor_value_info("channel_weights", TensorProto.FLOAT,
                                                            list(weights.shape)))


def export_checkpoint(model, layer: str | None = None, gradients: str = "auto",
                      indices: list[int] | None = None) -> onnx.ModelProto:
    """The ONNX model (forward + gradients + metadata) of a bincam net (``model.card`` used).
    ``indices``: dense gradients of these logits only (for an explaining graph, which selects
    the same attributes; the metadata still lists all)."""
    from bincam.cam.gradients import effective_head
    from bincam.runtime.torch_engine import model_attributes
    from bincam.export.forward import ACTIVATIONS, LOGITS, export_forward
    from bincam.nets import cam_module

    if gradients not in LAYOUTS:
        raise BincamError(f"--gradients must be one of {', '.join(LAYOUTS)}")
    layer = layer or model.default_cam_layer
    cam_module(model, layer)  # validates the name, listing the valid ones
    card = getattr(model, "card", None)
    size = card.image_size if card else getattr(model, "image_size", None) or 224
    affine = layer in getattr(model, "affine_heads", {})
    if gradients == "factored" and not affine:
        raise BincamError(f"layer {layer!r} has no affine head after it; use --gradients dense")
    layout = "factored" if (gradients == "factored" or (gradients == "auto" and affine)) else "dense"
    graph = export_forward(model, layer, size)
    mask_positive = True
    if layout == "dense":
        graph = append_gradients(graph, ACTIVATIONS, LOGITS, indices)
    else:
        w_eff, _, mask_positive = effective_head(model, layer)
        shape = [d.dim_value for d in graph.graph.output[1].type.tensor_type.shape.dim[2:]]
        _add_factored(graph, w_eff.cpu().numpy() / float(np.prod(shape)))
    write_metadata(graph, ModelInfo(
        attributes=model_attributes(model), target_layer=layer, gradient_layout=layout,
        image_size=size, mask_positive=bool(mask_positive),
        # bincam nets take RGB NCHW in [0, 1] (nets/resnets.py), as the torch engine feeds them:
        # the file's preprocessing is the identity (core.preprocess), whatever the card says
        positive_counts=card.positive_counts if card else None,
        negative_counts=card.negative_counts if card else None,
        input_fit=card.input_fit if card else "celeba",
        token_layout=getattr(model, "token_layout", "none")))
    return graph


def _require_tensors(model: onnx.ModelProto, source, **named: str | None) -> None:
    """Each named tensor (role → name) is in the graph, or one error naming it."""
    names = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    for what, name in named.items():
        if name is not None and name not in names:
            candidates = [n.output[0] for n in model.graph.node][-12:]
            raise BincamError(f"no tensor {name!r} ({what}) in {source}; tensors near the end: "
                              f"{', '.join(candidates)}")


def classifier_decisions(source: Path | str, logits: str, attributes: list[str] | None,
                         head: str = "sigmoid", positive_class: str | None = None,
                         target: str = "log-odds", activation: str | None = None):
    """``(Head, Decisions)`` of an ONNX classifier's logits (``heads.py``), before any export:
    the head chosen (and why) and the names of its binary decisions (``activation``, when
    given, is checked to exist too)."""
    from bincam.core.model_info import load_onnx

    model, _, _ = load_onnx(source)
    _require_tensors(model, source, activation=activation, logits=logits)
    chosen = resolve_head(model, logits, head)
    return chosen, decisions(chosen.kind, _class_count(model, chosen.logits), attributes,
                             positive_class, target)


def export_onnx_classifier(source: Path | str, activation: str, logits: str,
                           attributes: list[str] | None = None,
                           gradients: str = "auto", tokens: str = "none",
                           indices: list[int] | None = None, head: str = "sigmoid",
                           positive_class: str | None = None,
                           preprocessing: Preprocessing | None = None, size: int | None = None,
                           fit: str = "celeba", size_hint: int | None = None,
                           target: str = "log-odds") -> onnx.ModelProto:
    """Append the gradients to an ONNX classifier made by any framework: the factored channel
    weights where the head after ``activation`` is affine (``gradients`` auto or factored), else
    the VJP subgraph. ``tokens``: ``vit`` or ``swin`` when ``activation`` is a transformer's
    token tensor (mapped to ``[B, C, h, w]`` in the graph, see ``tokens.py``). ``indices``: as
    for ``export_checkpoint``. ``head``, ``positive_class``, ``target``: the head kind and what
    its maps explain (``heads.py``): the file's logits are always the binary log-odds ``d``
    (``σ(d)`` the model's own probability); ``target`` ``logit`` differentiates the class
    logit ``z_c`` instead of ``d_c`` (pytorch-grad-cam's target)."""
    from bincam.export.affine_head import find_affine_head
    from bincam.export.forward import fold_constants
    from bincam.export.tokens import (TOKEN_LAYOUTS, add_token_maps, run_shape, token_gradients,
                                      token_grid)

    try:
        model = onnx.load(str(source))
    except Exception as exc:  # noqa: BLE001 - protobuf errors vary
        raise BincamError(f"{source} is not a readable ONNX file ({exc.__class__.__name__})") \
            from None
    prep = (preprocessing or Preprocessing()).check()
    size = image_input(model, prep, size, str(source), size_hint)
    model = fold_constants(model)
    _require_tensors(model, source, activation=activation, logits=logits)
    if tokens not in TOKEN_LAYOUTS:
        raise BincamError(f"--tokens must be one of {', '.join(TOKEN_LAYOUTS)}, got {tokens!r}")
    chosen = resolve_head(model, logits, head)
    logits = chosen.logits
    activation, logits = _free_output_names(model, activation, logits,
                                            keep_logits=chosen.kind == "sigmoid")
    graph = helper.make_graph(list(model.graph.node), model.graph.name, list(model.graph.input),
                              [], list(model.graph.initializer), value_info=list(
                                  model.graph.value_info))
    grid = None
    if tokens != "none":
        shapes = onnx.shape_inference.infer_shapes(model, data_prop=True).graph.value_info
        dims = next((v.type.tensor_type.shape.dim for v in shapes if v.name == activation), [])
        shape = [d.dim_value or None for d in dims]
        if not shape or not all(shape[1:]):  # computed reshapes: ask the graph itself
            shape = run_shape(model, activation, size, prep.layout == "nhwc") or shape
        grid = token_grid(shape, tokens, activation)
        add_token_maps(graph, activation, tokens, grid)
    made = decisions(chosen.kind, _class_count(model, logits), attributes, positive_class,
                     target)
    class_logits, seed = logits, None
    if chosen.kind == "softmax":  # the binary log-odds d (J·z, or one-vs-rest) become logits
        seed = append_head(graph, logits, "bincam/log_odds", made, model_opset(model))
        logits = "bincam/log_odds"
    if target == "logit":  # what the gradients are of, for the self-checks: z_c per decision
        graph.node.append(helper.make_node("Constant", [], ["bincam/target_classes"],
                                           name="bincam/target_classes", value=numpy_helper.
                                           from_array(np.array(made.class_of, np.int64))))
        graph.node.append(helper.make_node("Gather", [class_logits, "bincam/target_classes"],
                                           [TARGET_LOGITS], axis=1, name=TARGET_LOGITS))
    for new, old in (("logits", logits), ("activations", activation)):
        if new != old and not (grid and new == "activations"):  # already called so: as it is
            graph.node.append(helper.make_node("Identity", [old], [new], name=f"bincam/{new}"))
    rebuilt = helper.make_model(graph, opset_imports=list(model.opset_import),
                                ir_version=model.ir_version)
    inferred = onnx.shape_inference.infer_shapes(rebuilt, data_prop=True)
    for name in ("logits", "activations"):
        vi = next(v for v in inferred.graph.value_info if v.name == name)
        rebuilt.graph.output.append(vi)
    names = made.attributes
    if gradients not in LAYOUTS:
        raise BincamError(f"--gradients must be one of {', '.join(LAYOUTS)}")
    linear = target == "logit" or made.jacobian is not None  # the explained score is J·z
    if gradients == "factored" and not linear:
        raise BincamError(f"the one-vs-rest log-odds of a {len(made.classes)}-way softmax are not "
                          "affine (logsumexp): no factored form; use --gradients dense (or "
                          "auto), or --target logit to explain the class logits z_c")
    head = find_affine_head(rebuilt, activation, class_logits) \
        if gradients != "dense" and grid is None and linear else None
    if head is not None:  # J·z of an affine z is affine: W_d = J·W_eff
        rows = made.jacobian if target == "log-odds" else \
            np.eye(len(made.classes))[made.class_of]
        head.weight, head.bias = rows @ head.weight, rows @ head.bias
    if gradients == "factored" and head is None:
        raise BincamError(f"the head after {activation!r} is not [Relu →] global average pool → "
                          "Linear layers; use --gradients dense")
    if head is not None:
        out = rebuilt
        spatial = [d.dim_value for d in out.graph.output[1].type.tensor_type.shape.dim[2:]]
        if len(spatial) != 2 or not all(spatial):
            raise BincamError(f"the activation {activation!r} must be [B, C, h, w] with static "
                              "h and w for the factored form; use --gradients dense")
        _add_factored(out, head.weight / float(np.prod(spatial)))
    else:
        if target == "logit":  # ∂z_c/∂A of each decision's class c
            picked = range(len(names)) if indices is None else indices
            out = append_gradients(rebuilt, activation, class_logits,
                                   [made.class_of[i] for i in picked])
        else:
            out = append_gradients(rebuilt, activation, class_logits if seed else logits,
                                   indices, seed)
        if grid is not None:
            token_gradients(out, tokens, grid)
    write_metadata(out, ModelInfo(attributes=names, target_layer=activation,
                                  gradient_layout="dense" if head is None else "factored",
                                  image_size=size, mask_positive=bool(head and head.relu_first),
                                  input_name=out.graph.input[0].name, token_layout=tokens,
                                  input_fit=check_fit(fit, "--fit"), pixel_range=prep.pixel_range,
                                  mean=prep.mean, std=prep.std,
                                  channel_order=prep.channel_order, layout=prep.layout,
                                  head=chosen.kind, classes=made.classes,
                                  positive_class=made.positive_class, target=target))
    return out


def _class_count(model: onnx.ModelProto, logits: str) -> int:
    """C of the class logits ``[B, C]`` (static), by shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    vi = next((v for v in list(inferred.value_info) + list(inferred.output) if v.name == logits),
              None)
    dims = vi.type.tensor_type.shape.dim if vi is not None else []
    if len(dims) != 2 or not dims[1].dim_value:
        raise BincamError(f"the logits {logits!r} must be [B, K] with a static K")
    return dims[1].dim_value


RESERVED = ("logits", "activations", "gradients", "channel_weights", "gradients_tokens")


def _free_output_names(model: onnx.ModelProto, activation: str, logits: str,
                       keep_logits: bool = True) -> tuple[str, str]:
    """Rename the source graph's own tensors that carry a name bincam's outputs take (say a
    Sigmoid output called ``logits`` while ``--logits`` names the Gemm before it), so the
    appended outputs do not collide; returns the (possibly renamed) activation and logits.
    ``keep_logits`` False: the class logits are renamed even when called ``logits`` (a softmax
    head's binary log-odds take that name)."""
    produced = {o for n in model.graph.node for o in n.output}
    for name in RESERVED:
        kept = ((activation, "activations"),) + (((logits, "logits"),) if keep_logits else ())
        if name in produced and (name, name) not in kept:
            new = f"{name}/source"
            rename_tensor(model.graph, name, new)
            for v in list(model.graph.value_info):
                if v.name == name:
                    model.graph.value_info.remove(v)
            activation = new if activation == name else activation
            logits = new if logits == name else logits
    return activation, logits


def narrow_attributes(model: onnx.ModelProto, indices: list[int]) -> onnx.ModelProto:
    """The gradient graph for the attributes at ``indices`` only: logits gathered, factored
    channel weights' rows selected, metadata narrowed. A dense graph's gradients must already be
    those of ``indices`` (``export_checkpoint(..., indices=indices)``)."""
    info = onnx_info(model, "the gradient graph")
    if indices == list(range(len(info.attributes))):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    rename_tensor(g, "logits", "bincam/logits_all_attributes")
    g.initializer.append(numpy_helper.from_array(np.asarray(indices, np.int64),
                                                 "bincam/selected_attributes"))
    g.node.append(helper.make_node("Gather", ["bincam/logits_all_attributes",
                                              "bincam/selected_attributes"], ["logits"], axis=1,
                                   name="bincam/select_attributes"))
    if any(TARGET_LOGITS in n.output for n in g.node):  # --target logit: its scores too
        rename_tensor(g, TARGET_LOGITS, f"{TARGET_LOGITS}_all")
        g.node.append(helper.make_node("Gather", [f"{TARGET_LOGITS}_all",
                                                  "bincam/selected_attributes"], [TARGET_LOGITS],
                                       axis=1, name="bincam/select_target_logits"))
    logits_out = next(o for o in g.output if o.name == "logits")
    logits_out.type.tensor_type.shape.dim[1].dim_value = len(indices)
    if info.gradient_layout == "factored":
        init = next(i for i in g.initializer if i.name == "bincam/channel_weights")
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[indices],
                                              "bincam/channel_weights"))
        next(o for o in g.output if o.name == "channel_weights"
             ).type.tensor_type.shape.dim[0].dim_value = len(indices)
    elif _dims(model, "gradients")[1] != len(indices):
        raise BincamError("internal: the dense gradients are not those of the selected attributes")
    info.attributes = [info.attributes[i] for i in indices]
    for counts in ("positive_counts", "negative_counts"):
        if getattr(info, counts) is not None:
            setattr(info, counts, [getattr(info, counts)[i] for i in indices])
    write_metadata(out, info)
    return out


def _dims(model: onnx.ModelProto, output: str) -> list[int]:
    vi = next(o for o in model.graph.output if o.name == output)
    return [d.dim_value for d in vi.type.tensor_type.shape.dim]


def save_onnx(model: onnx.ModelProto, path: Path | str) -> Path:
    """Write atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return Path(path)
