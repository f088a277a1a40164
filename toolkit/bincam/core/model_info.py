"""The model description, read and written in one place: checkpoint cards (``card.json``), ONNX
metadata (``metadata_props``) and ``ModelInfo``, what every engine, export and report read.

ONNX keys: ``bincam.version``, ``bincam.attributes`` (list), ``bincam.target_layer``,
``bincam.gradient_layout`` (``dense``: output ``gradients [B,K,C,h,w]``; ``factored``: output
``channel_weights [K,C]`` with ``bincam.mask_positive``), ``bincam.modes``, ``bincam.image_size``,
``bincam.class_counts`` ({positive, negative}), ``bincam.precision`` (fp32 | fp16),
``bincam.input``, ``bincam.input_fit`` (how images of any size enter the square input:
``data.fit``; absent = ``celeba``), ``bincam.token_layout`` (vit | swin, only for token
activations),
``bincam.head`` (absent = ``sigmoid``; ``softmax``: ``logits`` are the binary log-odds of the
source's softmax classes, see ``core.heads``) with ``bincam.classes`` and
``bincam.positive_class`` (2 classes) and ``bincam.target`` (``log-odds``: the maps explain
``d``; ``logit``: the class logit ``z_c``, as pytorch-grad-cam; ``logits`` stay ``d`` either way),
``bincam.explain`` (only in an explaining file: method, mode, map size and type, value range,
the attributes with masks and what each output is; ``export/explain_graph.py``), and the
ONNX image keys ``Image.BitmapPixelFormat`` (Rgb8),
``Image.ColorSpaceGamma`` (SRGB), ``Image.NominalPixelRange`` (Normalized_0_1) plus
``bincam.mean`` / ``bincam.std`` with ``bincam.pixel_range`` ([lo, hi]), ``bincam.channel_order``
(rgb | bgr), ``bincam.layout`` (nchw | nhwc) and ``bincam.raw_pixels`` (the input is uint8
``[B, S, S, 3]`` normalised in the graph): the model's preprocessing, ``core.preprocess``
(absent = the identity of bincam's own nets). No torch here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bincam import __version__
from bincam.core.modes import MODES
from bincam.errors import BincamError

HOW_TO_EXPORT = ("export one with `bincam export CHECKPOINT --out MODEL.onnx` or "
                 "`bincam export --onnx MODEL.onnx --activation TENSOR --logits TENSOR`")

WEIGHTS = "model.safetensors"
CARD = "card.json"
CARD_FORMAT = "bincam-model-card/1"


@dataclass
class ModelCard:
    """Everything needed to rebuild, feed and interpret a trained net."""

    arch: dict[str, Any]
    attributes: list[str]
    image_size: int
    pixel_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    cam_layers: list[str] = field(default_factory=list)
    default_cam_layer: str = ""
    positive_counts: list[int] | None = None
    negative_counts: list[int] | None = None
    input_fit: str = "celeba"        # data.fit: celeba | stretch | crop | pad
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    bincam_version: str = __version__
    format: str = CARD_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "card") -> "ModelCard":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BincamError(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            raise BincamError(f"{source} is not a bincam model card (format {CARD_FORMAT})")
        from bincam.core.card_schema import validate_card

        fields = validate_card(data, source)
        fields["arch"] = dict(fields["arch"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in fields.items() if k in known})

    def majority_is_positive(self) -> list[bool]:
        """Per attribute: is the positive class the majority of the training labels?"""
        if self.positive_counts is None or self.negative_counts is None:
            raise BincamError("this model card has no training class counts")
        return [p > n for p, n in zip(self.positive_counts, self.negative_counts)]


def read_card(path: Path | str) -> ModelCard:
    """The card of a checkpoint folder (or of the folder holding a given ``model.safetensors``)."""
    folder = checkpoint_folder(path)
    card_path = folder / CARD
    if not card_path.is_file():
        raise BincamError(f"no {CARD} in {folder}: a bincam checkpoint is a folder with {WEIGHTS} "
                          f"and {CARD} (make one with `bincam train` or `bincam convert-affact`)")
    return ModelCard.from_json(card_path.read_text(), str(card_path))


def checkpoint_folder(path: Path | str) -> Path:
    path = Path(path)
    if path.is_file():
        return path.parent
    if not path.exists():
        raise BincamError(f"checkpoint {path} does not exist")
    return path


@dataclass
class ModelInfo:
    """What a model predicts, takes and explains, whatever file or engine it comes from."""

    attributes: list[str]
    target_layer: str                # the CAM layer (activation tensor of an ONNX file)
    gradient_layout: str | None      # dense | factored (None: not known before a net is opened)
    image_size: int | None
    mask_positive: bool = True       # factored gradient is W·1[A > 0] (pre-ReLU tap)
    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)
    positive_counts: list[int] | None = None
    negative_counts: list[int] | None = None
    input_name: str = "images"
    version: str = ""
    precision: str = "fp32"          # compute type of the graph's bulk (inputs/outputs: float32)
    weighting: str | None = None     # training class weighting (cards only)
    token_layout: str = "none"       # vit | swin: the CAM tensor was a transformer's tokens
    explain: dict | None = None      # an explaining file: what its outputs are (bincam.explain)
    input_fit: str = "celeba"        # how an image of any size enters the input (data.fit)
    pixel_range: tuple = (0.0, 1.0)  # the model's input preprocessing (core.preprocess):
    channel_order: str = "rgb"       # x_c = (lo + (hi − lo)·p − mean_c)/std_c, RGB|BGR,
    layout: str = "nchw"             # NCHW|NHWC; raw_pixels: the graph takes uint8
    raw_pixels: bool = False         # [B, S, S, 3] RGB and does all that inside
    head: str = "sigmoid"            # sigmoid: K binary logits; softmax: log-odds of its classes
    classes: list[str] | None = None  # softmax: the class names (C of them)
    positive_class: int | None = None  # 2-way softmax: the class the one attribute names
    target: str = "log-odds"         # softmax: maps explain d (log-odds) or the class logit z_c

    @classmethod
    def from_card(cls, card: ModelCard, layer: str | None = None,
                  gradient_layout: str | None = None, mask_positive: bool = True) -> "ModelInfo":
        config = (card.training or {}).get("config") or {}
        return cls(list(card.attributes), layer or card.default_cam_layer, gradient_layout,
                   card.image_size, mask_positive, tuple(card.mean), tuple(card.std),
                   card.positive_counts, card.negative_counts, version=card.bincam_version,
                   weighting=config.get("weighting"), input_fit=card.input_fit)

    def to_metadata(self) -> dict[str, str]:
        """``metadata_props`` of an exported model."""
        from bincam.core.preprocess import preprocessing_of

        pixel_format, pixel_range = preprocessing_of(self).metadata_pixel_format()
        return {
            "bincam.version": __version__, "bincam.attributes": json.dumps(self.attributes),
            "bincam.target_layer": self.target_layer, "bincam.gradient_layout": self.gradient_layout,
            "bincam.mask_positive": json.dumps(self.mask_positive),
            "bincam.modes": json.dumps(list(MODES)),
            "bincam.image_size": json.dumps(self.image_size), "bincam.input": self.input_name,
            "bincam.input_fit": self.input_fit,
            "bincam.precision": self.precision,
            "bincam.mean": json.dumps(list(self.mean)), "bincam.std": json.dumps(list(self.std)),
            "bincam.class_counts": json.dumps({"positive": self.positive_counts,
                                               "negative": self.negative_counts}),
            "bincam.pixel_range": json.dumps(list(self.pixel_range)),
            "bincam.channel_order": self.channel_order, "bincam.layout": self.layout,
            "bincam.raw_pixels": json.dumps(self.raw_pixels),
            "Image.BitmapPixelFormat": pixel_format, "Image.ColorSpaceGamma": "SRGB",
            "Image.NominalPixelRange": pixel_range,
        } | ({"bincam.token_layout": self.token_layout} if self.token_layout != "none" else {}) \
          | ({"bincam.explain": json.dumps(self.explain)} if self.explain else {}) \
          | ({"bincam.head": self.head, "bincam.classes": json.dumps(self.classes),
              "bincam.positive_class": json.dumps(self.positive_class),
              "bincam.target": self.target}
             if self.head != "sigmoid" else {})

    @classmethod
    def from_metadata(cls, props: dict[str, str], source: str) -> "ModelInfo":
        """From a model's metadata map; a clear error if it was not made by bincam."""
        if "bincam.attributes" not in props:
            raise BincamError(f"{source} has no bincam metadata; {HOW_TO_EXPORT}")
        from bincam.core.card_schema import validate_metadata

        decoded: dict = {}
        for key in METADATA_JSON_KEYS:
            if f"bincam.{key}" in props:
                try:
                    decoded[key] = json.loads(props[f"bincam.{key}"])
                except ValueError:
                    raise BincamError(f"{source} has broken bincam metadata (bincam.{key} is not "
                                      f"JSON); re-export it with bincam export") from None
        for key, name in METADATA_TEXT_KEYS.items():
            if f"bincam.{key}" in props:
                decoded[name] = props[f"bincam.{key}"]
        counts = decoded.pop("class_counts", None) or {}
        if not isinstance(counts, dict):
            raise BincamError(f"{source} has broken bincam metadata (bincam.class_counts is not "
                              "an object); re-export it with bincam export")
        decoded.update(positive_counts=counts.get("positive"),
                       negative_counts=counts.get("negative"))
        fields = validate_metadata(decoded, source)
        return cls(**{k: tuple(v) if k in ("mean", "std", "pixel_range") else v
                      for k, v in fields.items()})


# metadata entries stored as JSON, and as plain text (key → ModelInfo field)
METADATA_JSON_KEYS = ("attributes", "image_size", "mask_positive", "mean", "std",
                      "class_counts", "explain", "pixel_range", "raw_pixels", "classes",
                      "positive_class")
METADATA_TEXT_KEYS = {"target_layer": "target_layer", "gradient_layout": "gradient_layout",
                      "input": "input_name", "version": "version", "precision": "precision",
                      "token_layout": "token_layout", "input_fit": "input_fit",
                      "channel_order": "channel_order", "layout": "layout", "head": "head",
                      "target": "target"}


def require_gradients(info: ModelInfo, source: str, command: str) -> None:
    """Refuse an explaining file where ``command`` needs the activations and gradients."""
    if info.explain:
        raise BincamError(f"{source} is an explaining file (heatmaps computed inside, no "
                          f"gradients); {command} needs a gradient file: export it without "
                          "--explain")


def write_metadata(model, info: ModelInfo) -> None:
    """Replace an ``onnx.ModelProto``'s ``metadata_props`` with ``info``'s."""
    del model.metadata_props[:]
    for key, value in info.to_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def load_onnx(model: str | Path | bytes, source: str | None = None):
    """``(ModelProto, serialized bytes, source name)`` of an ONNX file or its bytes; one clear
    error for a missing or unparsable file."""
    import onnx

    if isinstance(model, bytes):
        data, source = model, source or "the model"
    else:
        path = Path(model)
        source = source or str(path)
        if not path.is_file():
            raise BincamError(f"ONNX model {path} does not exist")
        data = path.read_bytes()
    try:
        return onnx.load_model_from_string(data), data, source
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for a bad file
        raise BincamError(f"{source} is not a loadable ONNX model "
                          f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})"
                          ) from None


def onnx_info(proto, source: str) -> ModelInfo:
    """``ModelInfo`` from an ``onnx.ModelProto``'s metadata."""
    return ModelInfo.from_metadata({p.key: p.value for p in proto.metadata_props}, source)


def is_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CARD).is_file()


def read_model_info(path: str | Path) -> ModelInfo:
    """The description of a checkpoint folder (its card; layout not yet known) or an ONNX file
    (its metadata), read without opening an engine."""
    if is_checkpoint(path):
        return ModelInfo.from_card(read_card(path))
    proto, _, source = load_onnx(path)
    return onnx_info(proto, source)


def head_summary(info: ModelInfo) -> str:
    """What the file's logits are, in words (``bincam info``)."""
    if info.head == "sigmoid":
        return "sigmoid: each logit z is one binary decision, p = σ(z)"
    classes, p = info.classes or [], info.positive_class
    maps = "; maps explain the class logit z_c (--target logit), not d" \
        if info.target == "logit" else ""
    if len(classes) == 2 and p is not None:
        return (f"softmax over 2 classes ({', '.join(classes)}): one decision, {classes[p]} vs "
                f"{classes[1 - p]}, logit d = z_{classes[p]} − z_{classes[1 - p]}, "
                f"p = σ(d) = the softmax probability{maps}")
    shown = ", ".join(classes[:6]) + ("…" if len(classes) > 6 else "")
    return (f"softmax over {len(classes)} classes ({shown}): one decision per class, one vs "
            "the rest, logit d_c = z_c − logsumexp_{j≠c} z_j, p = σ(d_c) = the softmax "
            f"probability of c{maps}")


def onnx_summary(path: str | Path) -> list[tuple[str, str]]:
    """``(field, value)`` rows that describe an exported file (``bincam info MODEL.onnx``):
    what it is, what it predicts and explains, its input and its outputs with their types."""
    import onnx

    proto, _, source = load_onnx(path)
    info = onnx_info(proto, source)

    def shape(value) -> str:
        dims = value.type.tensor_type.shape.dim
        return ", ".join(d.dim_param or str(d.dim_value) if d.HasField("dim_value") or d.dim_param
                         else "?" for d in dims)

    def typed(value) -> str:
        try:
            elem = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        except (KeyError, ValueError):  # no type declared (0), or none NumPy has
            elem = "?"
        return f"{value.name} {elem} [{shape(value)}]"

    if info.explain:
        kind = (f"explaining file: {info.explain.get('method')} maps, "
                f"{info.explain.get('mode')} mode, computed in the graph")
    else:
        kind = f"gradient file: {info.gradient_layout} gradients of the {info.target_layer} tensor"
    names = info.attributes
    return [("file", kind),
            ("attributes", f"{len(names)}: {', '.join(names[:6])}{'…' if len(names) > 6 else ''}"),
            ("head", head_summary(info)),
            ("input", _input_summary(info)),
            ("precision", info.precision),
            ("outputs", "; ".join(typed(o) for o in proto.graph.output)),
            ("made by", f"bincam {info.version or '?'}")]


def _input_summary(info: ModelInfo) -> str:
    """The input row of ``bincam info``: what the file takes and how pixels become it."""
    lo, hi = info.pixel_range
    if info.raw_pixels:
        taken = f"uint8 [B, {info.image_size}, {info.image_size}, 3] RGB pixels, normalised inside"
    else:
        taken = (f"{info.image_size}px {info.channel_order.upper()} {info.layout.upper()}, "
                 f"pixels {lo:g}–{hi:g}")
    return (f"{info.input_name}, {taken}: mean {list(info.mean)}, std {list(info.std)}, "
            f"fit {info.input_fit}")
