"""``bincam export --explain``: a checkpoint or any ONNX classifier → an explaining file.

    gradient graph of the selected attributes (export_checkpoint | export_onnx_classifier,
    dense gradients of those logits only) ─► narrow_attributes ─► reduce_precision (fp16: the
    bulk; the epilogue stays float32) ─► append_explanation (masks: CelebA regions for a
    checkpoint's attributes, --masks for any) ─► explaining file

The export checks run on both graphs: the usual checks on the gradient graph, structure and
``explain_checks.epilogue_parity`` on the explaining file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from bincam.attributes import resolve_attributes
from bincam.errors import BincamError
from bincam.export.explain_graph import ExplainSpec, append_explanation
from bincam.export.explain_masks import load_masks, region_masks
from bincam.export.model import export_checkpoint, export_onnx_classifier, narrow_attributes
from bincam.export.precision import reduce_precision


@dataclass
class ExplainingExport:
    gradient: onnx.ModelProto        # the gradient graph of the selected attributes
    model: onnx.ModelProto           # the explaining file
    masks: dict[str, np.ndarray]     # the masks of its PE, at the map size


def export_explaining(spec: ExplainSpec, model=None, onnx_path: Path | str | None = None,
                      select: str | None = None, masks: Path | str | None = None,
                      precision: str = "fp32", layer: str | None = None,
                      gradients: str = "auto", activation: str | None = None,
                      logits: str | None = None, attributes: list[str] | None = None,
                      tokens: str = "none", head: str = "sigmoid",
                      positive_class: str | None = None, target: str = "log-odds",
                      **input_options) -> ExplainingExport:
    """The explaining file of a bincam net (``model``) or of an ONNX classifier (``onnx_path``
    with ``activation``/``logits``/``attributes``/``tokens``/``head``/``positive_class``/
    ``target`` and ``input_options`` (``preprocessing``, ``size``, ``fit``) as for
    ``export_onnx_classifier``), for the attributes ``select`` (names or indices, default all)."""
    spec.check()
    if model is not None:
        from bincam.runtime.torch_engine import model_attributes

        names_all = model_attributes(model)
    else:
        from bincam.export.model import classifier_decisions

        names_all = classifier_decisions(onnx_path, logits, attributes, head,
                                         positive_class, target)[1].attributes
    names = resolve_attributes(select, names_all)
    indices = [names_all.index(n) for n in names]
    if model is not None:
        graph = export_checkpoint(model, layer, gradients, indices)
    else:
        graph = export_onnx_classifier(onnx_path, activation, logits, attributes, gradients,
                                       tokens, indices, head, positive_class,
                                       target=target, **input_options)
    graph = reduce_precision(narrow_attributes(graph, indices), precision)
    size = spec.map_size or _input_size(graph)
    chosen = region_masks(names, size) if model is not None else {}
    if masks is not None:
        loaded = load_masks(masks, names_all, size)
        chosen.update({n: m for n, m in loaded.items() if n in names})
    return ExplainingExport(graph, append_explanation(graph, spec, chosen), chosen)


def _input_size(graph: onnx.ModelProto) -> int:
    from bincam.core.model_info import onnx_info

    size = onnx_info(graph, "the gradient graph").image_size
    if not size:
        raise BincamError("the model's input size is not static; give --map-size")
    return size
