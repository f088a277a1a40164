"""Self-description of exported models: ``metadata_props`` (JSON values where structured).

Keys: ``bincam.version``, ``bincam.attributes`` (list), ``bincam.target_layer``,
``bincam.gradient_layout`` (``dense``: output ``gradients [B,K,C,h,w]``; ``factored``: output
``channel_weights [K,C]`` with ``bincam.mask_positive``), ``bincam.modes``, ``bincam.image_size``,
``bincam.class_counts`` ({positive, negative}), ``bincam.precision`` (fp32 | fp16),
``bincam.outputs``, and the ONNX image keys ``Image.BitmapPixelFormat`` (Rgb8),
``Image.ColorSpaceGamma`` (SRGB), ``Image.NominalPixelRange`` (Normalized_0_1) plus
``bincam.mean`` / ``bincam.std``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import onnx

from bincam.errors import BincamError

PREFIX = "bincam."
HOW_TO_EXPORT = ("export one with `bincam export CHECKPOINT --out MODEL.onnx` or "
                 "`bincam export --onnx MODEL.onnx --activation TENSOR --logits TENSOR`")


@dataclass
class ModelInfo:
    attributes: list[str]
    target_layer: str
    gradient_layout: str
    image_size: int | None
    mask_positive: bool = True
    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)
    positive_counts: list[int] | None = None
    negative_counts: list[int] | None = None
    input_name: str = "images"
    version: str = ""
    precision: str = "fp32"          # compute type of the graph's bulk (inputs/outputs: float32)

    def majority_is_positive(self) -> list[bool]:
        if self.positive_counts is None or self.negative_counts is None:
            raise BincamError("the model's metadata has no training class counts")
        return [p > n for p, n in zip(self.positive_counts, self.negative_counts)]


def write_metadata(model: onnx.ModelProto, info: ModelInfo) -> None:
    from bincam import __version__

    props = {
        "bincam.version": __version__, "bincam.attributes": json.dumps(info.attributes),
        "bincam.target_layer": info.target_layer, "bincam.gradient_layout": info.gradient_layout,
        "bincam.mask_positive": json.dumps(info.mask_positive),
        "bincam.modes": json.dumps(["predicted", "positive", "negative"]),
        "bincam.image_size": json.dumps(info.image_size), "bincam.input": info.input_name,
        "bincam.precision": info.precision,
        "bincam.mean": json.dumps(list(info.mean)), "bincam.std": json.dumps(list(info.std)),
        "bincam.class_counts": json.dumps({"positive": info.positive_counts,
                                           "negative": info.negative_counts}),
        "Image.BitmapPixelFormat": "Rgb8", "Image.ColorSpaceGamma": "SRGB",
        "Image.NominalPixelRange": "Normalized_0_1",
    }
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(props: dict[str, str], source: str) -> ModelInfo:
    """``ModelInfo`` from a model's metadata map; a clear error if it was not made by bincam."""
    if "bincam.attributes" not in props:
        raise BincamError(f"{source} has no bincam metadata; {HOW_TO_EXPORT}")
    try:
        counts = json.loads(props.get("bincam.class_counts", "{}"))
        return ModelInfo(
            attributes=json.loads(props["bincam.attributes"]),
            target_layer=props["bincam.target_layer"],
            gradient_layout=props["bincam.gradient_layout"],
            image_size=json.loads(props.get("bincam.image_size", "null")),
            mask_positive=json.loads(props.get("bincam.mask_positive", "true")),
            mean=tuple(json.loads(props.get("bincam.mean", "[0, 0, 0]"))),
            std=tuple(json.loads(props.get("bincam.std", "[1, 1, 1]"))),
            positive_counts=counts.get("positive"), negative_counts=counts.get("negative"),
            input_name=props.get("bincam.input", "images"),
            version=props.get("bincam.version", ""),
            precision=props.get("bincam.precision", "fp32"))
    except (KeyError, ValueError) as exc:
        raise BincamError(f"{source} has broken bincam metadata ({exc}); {HOW_TO_EXPORT}") from None
