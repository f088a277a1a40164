"""Evidence regions of a CSV dataset: boxes in ``labels.csv`` cells and ``regions.json``, validated
with pydantic, and the per-image mask images (no torch).

A box is ``x0, y0, x1, y1`` in the image's own pixel-edge coordinates (``0 ≤ x0 ≤ x1 ≤ W``,
``0 ≤ y0 ≤ y1 ≤ H``: ``0,0,W,H`` is the whole image; ``x0 = x1`` is an empty box, which covers no
pixel). A cell holds several boxes separated by ``;`` (numbers by ``,`` or spaces):
``"12,30,40,66; 50,50,60,70"``. ``regions.json`` maps an image path (as in the CSV) to labels to
lists of boxes: ``{"img/001.png": {"lesion": [[12, 30, 40, 66]]}}``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from bincam.errors import BincamError

Coordinate = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]


class Box(BaseModel):
    """One box; constructed from ``[x0, y0, x1, y1]``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    x0: Coordinate
    y0: Coordinate
    x1: Coordinate
    y1: Coordinate

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, data: Any):
        if isinstance(data, (list, tuple)):
            if len(data) != 4:
                raise ValueError(f"a box has 4 numbers x0, y0, x1, y1, got {len(data)}")
            return dict(zip(("x0", "y0", "x1", "y1"), data))
        return data

    @model_validator(mode="after")
    def _ordered(self):
        if self.x0 > self.x1 or self.y0 > self.y1:
            raise ValueError(f"box {self.text()} needs x0 ≤ x1 and y0 ≤ y1")
        return self

    def text(self) -> str:
        return "(" + ", ".join(f"{v:g}" for v in (self.x0, self.y0, self.x1, self.y1)) + ")"

    def array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float64)


BOXES = TypeAdapter(list[Box])
REGIONS_FILE = TypeAdapter(dict[str, dict[str, list[Box]]])


def _message(exc: ValidationError) -> tuple[list, str]:
    error = exc.errors()[0]
    return list(error["loc"]), error["msg"].removeprefix("Value error, ")


def parse_boxes(cell: str) -> np.ndarray:
    """Boxes ``[n, 4]`` from a CSV cell (empty: none); ``ValueError`` with a short reason."""
    boxes = []
    for part in cell.split(";"):
        part = part.strip()
        if not part:
            continue
        numbers = [v for v in re.split(r"[,\s]+", part) if v]
        try:
            values = [float(v) for v in numbers]
        except ValueError:
            raise ValueError(f"malformed box {part!r}: expected 4 numbers x0,y0,x1,y1") from None
        if len(values) != 4:
            raise ValueError(f"malformed box {part!r}: expected 4 numbers x0,y0,x1,y1, got "
                             f"{len(values)}")
        boxes.append(values)
    try:
        parsed = BOXES.validate_python(boxes)
    except ValidationError as exc:
        loc, msg = _message(exc)
        raise ValueError(f"box {loc[0] + 1}: {msg}") from None
    return np.stack([b.array() for b in parsed]) if parsed else np.zeros((0, 4))


def outside(boxes: np.ndarray, width: int, height: int) -> np.ndarray | None:
    """The first box reaching beyond a ``width×height`` image, or None."""
    for b in np.asarray(boxes).reshape(-1, 4):
        if b[2] > width or b[3] > height:
            return b
    return None


def box_text(b: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in b) + ")"


def read_regions_file(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{image path: {label: boxes [n, 4]}}`` from a ``regions.json``; errors name the image
    and label."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BincamError(f"regions file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BincamError(f"{path} is not valid JSON ({exc})") from None
    try:
        parsed = REGIONS_FILE.validate_python(data)
    except ValidationError as exc:
        loc, msg = _message(exc)
        where = ", ".join(f"{name} {v!r}" if name != "box" else f"box {v + 1}" for name, v in
                          zip(("image", "label", "box", "coordinate"), loc))
        raise BincamError(f"{path}: {where + ': ' if where else ''}{msg}") from None
    return {image: {label: np.stack([b.array() for b in boxes]) if boxes else np.zeros((0, 4))
                    for label, boxes in labels.items()} for image, labels in parsed.items()}


def read_mask_image(path: Path) -> np.ndarray:
    """A per-image mask as ``bool [H, W]``: grey level > 127, or > 0 in a 0/1 image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L"))
    except FileNotFoundError:
        raise BincamError(f"mask image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BincamError(f"mask image {path} does not decode ({exc.__class__.__name__})") \
            from None
    return grey > (127 if grey.max(initial=0) > 1 else 0)
