"""Dataset specs on the command line: ``synth:DIR`` or ``celeba:DIR``, opened as a split (no torch)."""

from __future__ import annotations

from pathlib import Path

from bincam.data.celeba import CelebA
from bincam.errors import BincamError

DATA_KINDS = ("synth", "celeba")


def parse_data_spec(spec: str) -> tuple[str, Path]:
    """Split ``KIND:DIR`` and check the kind."""
    kind, sep, folder = spec.partition(":")
    if not sep or kind not in DATA_KINDS or not folder:
        raise BincamError(f"--data must look like synth:DIR or celeba:DIR, got {spec!r}")
    return kind, Path(folder)


def open_split(spec: str, split: str, image_size: int, attributes=None, limit: int | None = None,
               frontal: bool = False) -> CelebA:
    """The ``split`` of the dataset ``spec`` (optionally frontal faces only, the first ``limit``)."""
    _, folder = parse_data_spec(spec)
    ds = CelebA(folder, split=split, attributes=attributes, frontal=frontal, image_size=image_size)
    if len(ds) == 0:
        raise BincamError(f"the {split} split of {folder} is empty")
    if limit is not None and limit < len(ds):
        ds.files, ds.labels, ds.splits = ds.files[:limit], ds.labels[:limit], ds.splits[:limit]
        if ds.landmarks is not None:
            ds.landmarks = ds.landmarks[:limit]
    return ds
