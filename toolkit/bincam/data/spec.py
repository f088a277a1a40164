"""Dataset specs on the command line: ``synth:DIR``, ``celeba:DIR`` or ``csv:FILE`` (a folder holding
``labels.csv`` too; ``data.csvset``), opened as a split (no torch)."""

from __future__ import annotations

from pathlib import Path

from bincam.data.celeba import CelebA
from bincam.errors import BincamError

DATA_KINDS = ("synth", "celeba", "csv")


def parse_data_spec(spec: str) -> tuple[str, Path]:
    """Split ``KIND:DIR`` and check the kind."""
    kind, sep, folder = spec.partition(":")
    if not sep or kind not in DATA_KINDS or not folder:
        raise BincamError(f"--data must look like synth:DIR, celeba:DIR or csv:FILE, got {spec!r}")
    return kind, Path(folder)


def open_split(spec: str, split: str, image_size: int, attributes=None, limit: int | None = None,
               frontal: bool = False) -> CelebA:
    """The ``split`` of the dataset ``spec`` (optionally frontal faces only, the first ``limit``)."""
    kind, folder = parse_data_spec(spec)
    if limit is not None and limit < 1:
        raise BincamError(f"--limit must be at least 1, got {limit}")
    if kind == "csv":
        return open_csv_split(folder, split, image_size, attributes, limit, frontal)
    ds = CelebA(folder, split=split, attributes=attributes, frontal=frontal, image_size=image_size)
    if len(ds) == 0:
        raise BincamError(f"the {split} split of {folder} is empty")
    if limit is not None and limit < len(ds):
        ds.files, ds.labels, ds.splits = ds.files[:limit], ds.labels[:limit], ds.splits[:limit]
        if ds.landmarks is not None:
            ds.landmarks = ds.landmarks[:limit]
    return ds


def open_csv_split(source: Path, split: str, image_size: int, attributes=None,
                   limit: int | None = None, frontal: bool = False):
    """The ``split`` of a CSV dataset (``data.csvset.CsvDataset``), the first ``limit`` rows."""
    from bincam.data.csvset import CsvDataset

    if frontal:
        raise BincamError("--frontal selects faces by their landmarks; a csv: dataset has none")
    if limit is not None and limit < 1:
        raise BincamError(f"--limit must be at least 1, got {limit}")
    ds = CsvDataset(source, split=split, attributes=attributes, image_size=image_size,
                    limit=limit)
    if len(ds) == 0:
        raise BincamError(f"the {split} split of {ds.csv_path} is empty")
    return ds


def check_data_spec(spec: str) -> None:
    """Fail early (before any work) on a spec whose dataset cannot be found."""
    kind, folder = parse_data_spec(spec)
    if kind == "csv":
        from bincam.data.csvset import locate_csv

        locate_csv(folder)
    else:
        from bincam.data.celeba import locate

        locate(folder)
