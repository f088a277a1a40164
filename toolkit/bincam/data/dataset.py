"""What every dataset reader offers (``data.CelebA``, ``data.CsvDataset``), and the few calls that
differ between them, in one place (no torch).

A dataset has ``files``, ``labels uint8 [N, K]`` in {0, 1}, ``splits`` (0 train, 1 valid, 2 test),
``attributes`` (the K label names), ``image_size``, ``list_dir`` / ``image_dir``, ``landmarks``
(or None), ``image_path(i)``, ``load_image(i)`` and ``positive_counts()``. A CSV dataset adds its
fit rule, per-image evidence regions and per-label fixed masks; a face dataset's fixed masks are
the CelebA mask regions of ``bincam.attributes`` and its frame is ``celeba`` (``data.fit``).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class Dataset(Protocol):
    files: list[str]
    labels: np.ndarray
    splits: np.ndarray
    attributes: list[str]
    image_size: int

    def __len__(self) -> int: ...
    def load_image(self, i: int) -> np.ndarray: ...
    def positive_counts(self) -> np.ndarray: ...


def is_csv(ds) -> bool:
    return getattr(ds, "kind", "") == "csv"


def fit_of(ds) -> str:
    """The fit rule that brings the dataset's images into the model's frame."""
    return getattr(ds, "fit", "celeba")


def load_at(ds, i: int, size: int) -> np.ndarray:
    """Image ``i`` as ``uint8 [S, S, 3]`` at ``size`` by the dataset's own rule."""
    if is_csv(ds):
        return ds.load_image(i, size)
    from bincam.data.celeba import load_aligned

    return load_aligned(ds.image_path(i), size)


def fixed_masks(ds, attributes: Sequence[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(bool [K, S, S], known [K])``: the per-label masks PE is measured in where an image has
    no region of its own (CelebA regions for face attributes; a CSV dataset's ``label_masks/``)."""
    if is_csv(ds):
        return ds.fixed_masks(size, attributes)
    from bincam.attributes import known_masks

    return known_masks(list(attributes), size)


def has_regions(ds) -> bool:
    """Whether images carry evidence regions of their own (a CSV dataset's boxes or masks)."""
    return bool(is_csv(ds) and ds.has_regions)


def describe(ds) -> dict:
    """What a card records about the training data."""
    if is_csv(ds):
        return ds.describe()
    return {"kind": "celeba", "folder": str(ds.list_dir), "labels": list(ds.attributes),
            "fit": "celeba"}


def digest_extra(ds) -> str:
    """What identifies an audit's dataset beyond files and labels ("" for a face dataset)."""
    return ds.digest() if is_csv(ds) else ""
