"""The schemas of ``card.json`` and of an exported file's ``bincam.*`` metadata, validated
declaratively with pydantic before either is used.

Types are strict (no ``"big"`` for a size, no ``true`` for a count), ranges sane (input side
8–2048 px), and the cross-field rules hold: unique attribute names, as many as the net has
outputs, class counts per attribute, a pixel range that is an interval, three positive stds.
One ``BincamError`` names the first broken field, e.g. ``card.json: image_size: …``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import math

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat,
                      StrictInt, StrictStr, ValidationError, model_validator)

from bincam.errors import BincamError

MAX_IMAGE_SIZE = 2048
# each architecture's keys beyond arch and num_outputs (nets/: ``arch_config``)
ARCH_KEYS = {"small": {"width", "blocks"}, "resnet18": set(), "resnet34": set(),
             "resnet50": set(), "affact": set()}
Number = Annotated[StrictFloat, Field(allow_inf_nan=False)] | StrictInt  # finite
AnyNumber = StrictFloat | StrictInt   # NaN allowed: a training log may record a diverged epoch


def _not_infinite(value: float) -> float:
    if math.isinf(value):
        raise ValueError("an error rate is a number in [0, 1], or NaN where it is undefined")
    return value


# an error rate: NaN where the class has no validation samples (core/metrics.py), never ±inf
Rate = Annotated[StrictFloat, AfterValidator(_not_infinite)] | StrictInt
Count = Annotated[StrictInt, Field(ge=0)]
WEIGHTINGS = ("none", "balanced", "moon")  # training.weights.WEIGHTINGS (no torch import here)


class ArchSchema(BaseModel):
    model_config = ConfigDict(extra="allow")

    arch: StrictStr
    num_outputs: StrictInt = Field(40, ge=1, le=100_000)

    @model_validator(mode="after")
    def _known(self):
        if self.arch not in ARCH_KEYS:
            raise ValueError(f"unknown architecture {self.arch!r}; one of {', '.join(ARCH_KEYS)}")
        extra = dict(self.model_extra or {})
        unknown = set(extra) - ARCH_KEYS[self.arch]
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))} for {self.arch}")
        width, blocks = extra.get("width", 16), extra.get("blocks", [1, 1, 1, 1])
        if type(width) is not int or not 1 <= width <= 1024:
            raise ValueError(f"width: {width!r} is not a whole number in 1..1024")
        if not isinstance(blocks, list) or not 1 <= len(blocks) <= 8 or \
                any(type(n) is not int or not 1 <= n <= 64 for n in blocks):
            raise ValueError(f"blocks: {blocks!r} is not a list of 1–8 whole numbers in 1..64")
        return self


class ValidationSchema(BaseModel):
    """``validation``: the best epoch's validation metrics (``bincam info`` shows them).

    ``epoch`` is the 0-based epoch, ``loss`` a finite number, the ``means`` of each metric and
    ``per_attribute`` (attribute name → metric → value) error rates: numbers, NaN where a class
    had no validation samples (undefined), never ±inf. Unknown keys are kept, not read.
    """
    model_config = ConfigDict(extra="allow")

    epoch: StrictInt | None = Field(None, ge=0)
    loss: Number | None = None
    means: dict[StrictStr, Rate] = {}
    per_attribute: dict[StrictStr, dict[StrictStr, Rate]] = {}


class TrainConfigSchema(BaseModel):
    """``training.config``: the command line the net was trained with; the audit reads
    ``weighting``."""
    model_config = ConfigDict(extra="allow")

    weighting: Literal[WEIGHTINGS] | None = None


class ClassWeightsSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    positive: list[Annotated[Number, Field(gt=0)]]
    negative: list[Annotated[Number, Field(gt=0)]]


class TrainingSchema(BaseModel):
    """``training``: how the net was trained (written by ``bincam train`` and
    ``convert-affact``); every key optional, each of its type when present."""
    model_config = ConfigDict(extra="allow")

    config: TrainConfigSchema | None = None
    class_weights: ClassWeightsSchema | None = None
    epoch: StrictInt | None = Field(None, ge=0)
    history: list[dict[StrictStr, AnyNumber]] = []
    world_size: StrictInt | None = Field(None, ge=1)
    device: StrictStr | None = None
    train_images: Count | None = None
    val_images: Count | None = None
    source: StrictStr | None = None


class CardSchema(BaseModel):
    model_config = ConfigDict(extra="ignore")

    arch: ArchSchema
    attributes: list[StrictStr] = Field(min_length=1)
    image_size: StrictInt = Field(ge=8, le=MAX_IMAGE_SIZE)
    pixel_range: tuple[Number, Number] = (0.0, 1.0)
    mean: tuple[Number, Number, Number] = (0.0, 0.0, 0.0)
    std: tuple[Number, Number, Number] = (1.0, 1.0, 1.0)
    cam_layers: list[StrictStr] = []
    default_cam_layer: StrictStr = ""
    positive_counts: list[StrictInt] | None = None
    negative_counts: list[StrictInt] | None = None
    input_fit: Literal["celeba", "stretch", "crop", "pad"] = "celeba"
    training: TrainingSchema = TrainingSchema()
    validation: ValidationSchema = ValidationSchema()
    bincam_version: StrictStr = ""
    format: StrictStr

    @model_validator(mode="after")
    def _consistent(self):
        if len(self.attributes) != self.arch.num_outputs:
            raise ValueError(f"attributes: {len(self.attributes)} names for a net with "
                             f"{self.arch.num_outputs} outputs")
        _check_attributes(self)
        if not self.pixel_range[0] < self.pixel_range[1]:
            raise ValueError(f"pixel_range: {list(self.pixel_range)} is not an interval")
        if self.default_cam_layer and self.cam_layers and \
                self.default_cam_layer not in self.cam_layers:
            raise ValueError(f"default_cam_layer: {self.default_cam_layer!r} is not in cam_layers")
        unknown = sorted(set(self.validation.per_attribute) - set(self.attributes))
        if unknown:
            raise ValueError(f"validation.per_attribute: {unknown[0]!r} is not an attribute")
        weights = self.training.class_weights
        if weights is not None and not len(weights.positive) == len(weights.negative) == \
                len(self.attributes):
            raise ValueError("training.class_weights: needs one positive and one negative weight "
                             f"per attribute ({len(self.attributes)})")
        return self


class MetadataSchema(BaseModel):
    """The ``bincam.*`` metadata of an exported ONNX file, its JSON values decoded."""
    model_config = ConfigDict(extra="forbid")

    attributes: list[StrictStr] = Field(min_length=1)
    target_layer: StrictStr
    gradient_layout: Literal["dense", "factored"]
    image_size: StrictInt | None = Field(None, ge=8, le=MAX_IMAGE_SIZE)
    mask_positive: StrictBool = True
    mean: tuple[Number, Number, Number] = (0.0, 0.0, 0.0)
    std: tuple[Number, Number, Number] = (1.0, 1.0, 1.0)
    positive_counts: list[StrictInt] | None = None
    negative_counts: list[StrictInt] | None = None
    input_name: StrictStr = "images"
    version: StrictStr = ""
    precision: Literal["fp32", "fp16"] = "fp32"
    token_layout: Literal["none", "vit", "swin"] = "none"
    explain: dict[str, Any] | None = None
    input_fit: Literal["celeba", "stretch", "crop", "pad"] = "celeba"
    pixel_range: tuple[Number, Number] = (0.0, 1.0)
    channel_order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"
    raw_pixels: StrictBool = False
    head: Literal["sigmoid", "softmax"] = "sigmoid"
    classes: list[StrictStr] | None = None
    positive_class: StrictInt | None = None
    target: Literal["log-odds", "logit"] = "log-odds"

    @model_validator(mode="after")
    def _consistent(self):
        _check_attributes(self)
        if not self.pixel_range[0] < self.pixel_range[1]:
            raise ValueError(f"pixel_range: {list(self.pixel_range)} is not an interval")
        _check_head(self)
        return self


def _check_head(schema) -> None:
    """A softmax head names ≥ 2 classes; two classes make one attribute (the positive class),
    more make one per class (a file may hold a subset); a sigmoid head has neither."""
    classes, positive = schema.classes, schema.positive_class
    if schema.head == "sigmoid":
        if classes is not None or positive is not None or schema.target != "log-odds":
            raise ValueError("classes, positive_class, target: only for a softmax head")
        return
    if classes is None or len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError("classes: a softmax head needs ≥ 2 distinct class names")
    if len(classes) == 2:
        if positive not in (0, 1) or schema.attributes != [classes[positive]]:
            raise ValueError("positive_class: a 2-way softmax head has one attribute, the "
                             "positive class (0 or 1)")
    elif positive is not None or not set(schema.attributes) <= set(classes):
        raise ValueError("attributes: a C-way softmax head's attributes are its classes")


def _check_attributes(schema) -> None:
    """What a card and a file's metadata share: unique names, positive stds, one class count per
    attribute."""
    names = schema.attributes
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"attributes: names repeat: {', '.join(repeated)}")
    if not all(s > 0 for s in schema.std):
        raise ValueError(f"std: {list(schema.std)} must be positive")
    for field in ("positive_counts", "negative_counts"):
        counts = getattr(schema, field)
        if counts is not None and (len(counts) != len(names) or min(counts) < 0):
            raise ValueError(f"{field}: needs one count ≥ 0 per attribute ({len(names)})")


def validate_metadata(data: dict, source: str) -> dict:
    """The decoded metadata, validated (one error naming the first broken entry)."""
    try:
        return MetadataSchema.model_validate(data).model_dump()
    except ValidationError as exc:
        raise BincamError(f"{source} has broken bincam metadata ({_where(exc)}); re-export it "
                          "with bincam export") from None


def _where(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = [p for p in error["loc"] if not _is_union_tag(p)]
    message = error["msg"].removeprefix("Value error, ")
    if loc and isinstance(loc[-1], int) and error["type"] in ("missing", "too_long"):
        loc, message = loc[:-1], "wrong number of values"
    where = ".".join(str(p) for p in loc)
    return f"{where + ': ' if where else ''}{message}"


def _is_union_tag(part) -> bool:
    """pydantic names the member of a union that failed (``float``, ``int``, …) in an error's
    location; a user needs the field's path, not the member."""
    return isinstance(part, str) and (part in {"float", "int", "str", "bool", "none"}
                                      or part.startswith(("function-", "constrained-")))


def validate_card(data: Any, source: str) -> dict:
    """The card's fields, validated (one clear error naming the first broken field)."""
    try:
        card = CardSchema.model_validate(data)
    except ValidationError as exc:
        raise BincamError(f"{source}: {_where(exc)}") from None
    fields = card.model_dump()
    for block in ("training", "validation"):  # as written, without the absent keys' defaults
        fields[block] = getattr(card, block).model_dump(exclude_unset=True)
    return fields
