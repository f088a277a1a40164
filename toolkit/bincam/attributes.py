"""The 40 CelebA attributes, their training prevalences and their mask regions.

Everything bincam knows about attributes lives here. Mask regions are rectangles on the 224×224
aligned face frame (a 7×7 grid of 32-px cells); ``mask_array`` scales them to any square size.
Pixel ranges are half-open: rows ``y0 ≤ y < y1``, cols ``x0 ≤ x < x1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from bincam.errors import BincamError

FRAME = 224
"""Side of the aligned face frame the mask rectangles are defined on."""

ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
"""CelebA attribute names in the column order of ``list_attr_celeba.txt``."""

TRAIN_POSITIVE_SHARE: dict[str, float] = dict(zip(ATTRIBUTES, (
    0.112, 0.266, 0.514, 0.204, 0.023, 0.152, 0.241, 0.236, 0.239, 0.149, 0.051, 0.204, 0.144,
    0.058, 0.047, 0.065, 0.064, 0.042, 0.384, 0.452, 0.419, 0.482, 0.041, 0.116, 0.834, 0.283,
    0.043, 0.276, 0.080, 0.065, 0.056, 0.480, 0.209, 0.319, 0.187, 0.049, 0.470, 0.121, 0.073,
    0.779,
)))
"""Share of positive labels of each attribute in the CelebA training split."""

Box = tuple[int, int, int, int]
"""(y0, y1, x0, x1) on the 224 frame, half-open."""


@dataclass(frozen=True)
class MaskRegion:
    """A union of boxes minus a union of boxes, on the 224×224 frame."""

    name: str
    boxes: tuple[Box, ...]
    minus: tuple[Box, ...] = ()

    def array(self, size: int = FRAME) -> np.ndarray:
        """Boolean ``[size, size]`` mask; box edges scale by ``size/224`` and round to pixels."""
        out = np.zeros((size, size), dtype=bool)
        for boxes, value in ((self.boxes, True), (self.minus, False)):
            for y0, y1, x0, x1 in boxes:
                out[_scale(y0, size):_scale(y1, size), _scale(x0, size):_scale(x1, size)] = value
        return out

    def area(self, size: int = FRAME) -> int:
        return int(self.array(size).sum())


def _scale(v: int, size: int) -> int:
    return int(round(v * size / FRAME))


MASK_REGIONS: dict[str, MaskRegion] = {m.name: m for m in (
    MaskRegion("upper_head", ((0, 96, 64, 160),)),
    MaskRegion("hat", ((0, 96, 32, 192),)),
    MaskRegion("eyes", ((64, 128, 64, 160),)),
    MaskRegion("nose_cheeks", ((96, 160, 64, 160),)),
    MaskRegion("ears", ((96, 192, 32, 96), (96, 192, 128, 192))),
    MaskRegion("mouth", ((128, 160, 64, 160),)),
    MaskRegion("goatee", ((128, 192, 96, 128),)),
    MaskRegion("double_chin", ((160, 192, 64, 160),)),
    MaskRegion("neck", ((160, 224, 64, 160),)),
    MaskRegion("face", ((32, 192, 64, 160),)),
    MaskRegion("global", ((32, 224, 32, 192),)),
    MaskRegion("hair", ((32, 224, 32, 192),), minus=((64, 224, 64, 160),)),
)}

_REGION_OF_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "upper_head": ("Bald", "Receding_Hairline"),
    "hat": ("Wearing_Hat",),
    "eyes": ("Arched_Eyebrows", "Bags_Under_Eyes", "Bangs", "Bushy_Eyebrows", "Eyeglasses",
             "Narrow_Eyes"),
    "nose_cheeks": ("5_o_Clock_Shadow", "Big_Nose", "Heavy_Makeup", "High_Cheekbones", "No_Beard",
                    "Pointy_Nose", "Rosy_Cheeks"),
    "ears": ("Sideburns", "Wearing_Earrings"),
    "mouth": ("Big_Lips", "Mouth_Slightly_Open", "Mustache", "Smiling", "Wearing_Lipstick"),
    "goatee": ("Goatee",),
    "double_chin": ("Double_Chin",),
    "neck": ("Wearing_Necklace", "Wearing_Necktie"),
    "face": ("Oval_Face", "Pale_Skin"),
    "global": ("Attractive", "Blurry", "Chubby", "Male", "Young"),
    "hair": ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Straight_Hair", "Wavy_Hair"),
}

ATTRIBUTE_REGION: dict[str, str] = {
    attr: region for region, attrs in _REGION_OF_ATTRIBUTES.items() for attr in attrs
}
"""Mask region name of each attribute."""


def mask_region(attribute: str) -> MaskRegion:
    """The mask region of one attribute."""
    return MASK_REGIONS[ATTRIBUTE_REGION[check_attributes([attribute])[0]]]


def mask_array(attribute: str, size: int = FRAME) -> np.ndarray:
    """Boolean ``[size, size]`` mask of the region where ``attribute`` lives."""
    return mask_region(attribute).array(size)


def attribute_masks(attributes: Sequence[str], size: int = FRAME) -> np.ndarray:
    """Stacked boolean masks ``[K, size, size]`` for the given attributes, in their order."""
    return np.stack([mask_array(a, size) for a in attributes])


def known_masks(attributes: Sequence[str], size: int = FRAME) -> tuple[np.ndarray, np.ndarray]:
    """``(bool [K, size, size], known [K])``: the mask region of each attribute that has one
    (CelebA's), all False where it has none (another dataset's label)."""
    known = np.array([a in ATTRIBUTE_REGION for a in attributes], dtype=bool)
    masks = np.zeros((len(known), size, size), dtype=bool)
    for k in np.flatnonzero(known):
        masks[k] = mask_array(attributes[k], size)
    return masks, known


def check_attributes(names: Iterable[str], known: Sequence[str] = ATTRIBUTES) -> list[str]:
    """Return ``names`` as a list, raising one clear error for any name not in ``known``."""
    names = list(names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BincamError(
            f"unknown attribute(s) {', '.join(unknown)}; valid names are: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise BincamError(f"attribute names repeat: {', '.join(names)}")
    return names


def resolve_attributes(spec: str | Sequence[str] | None,
                       known: Sequence[str] = ATTRIBUTES) -> list[str]:
    """Turn ``None``/``"all"``, a comma-separated string, names or indices into names."""
    if spec is None or spec == "all":
        return list(known)
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = []
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            idx = int(item)
            if not 0 <= idx < len(known):
                raise BincamError(f"attribute index {idx} is out of range 0..{len(known) - 1}")
            names.append(known[idx])
        else:
            names.append(item)
    return check_attributes(names, known)
