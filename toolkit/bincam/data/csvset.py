"""The generic dataset: an image folder with ``labels.csv``, any binary labels (no torch).

``labels.csv`` (``--data csv:FILE``, or ``csv:DIR`` for ``DIR/labels.csv``), one row per image:

- ``path``: the image file, relative to the CSV's folder (any size, any Pillow format);
- one column per binary label, named freely (letters, digits, ``_ . -``): ``0/1`` or ``-1/1``
  (CelebA's convention), one convention per column; K = 1 is a single label column;
- ``split`` (optional): ``train``, ``valid`` (``val``) or ``test`` (or 0/1/2); without it an
  image's split is ``sha256(path) mod 10``: 0–7 train, 8 valid, 9 test (order-free, stable);
- ``boxes:LABEL`` (optional): the image's evidence boxes for LABEL (``data.regions``);
- ``mask:LABEL`` (optional): a mask image for LABEL, the image's size, relative path.

Beside it, optionally: ``regions.json`` (more boxes, ``data.regions``), ``label_masks/`` (one fixed
mask per label in the model's square frame, ``LABEL.png|.npy``, as ``export --masks`` takes) and
``dataset.json`` (``{"fit": "stretch" | "crop" | "pad", "regions": FILE, "label_masks": DIR}``; the
fit rule, ``data.fit``, default ``stretch``). Errors name the file, row (the CSV's line: the
header is row 1) and column.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from bincam.data.fit import FITS, fit_mask, fit_transform, load_fitted, rasterize_boxes
from bincam.data.regions import (box_text, outside, parse_boxes, read_mask_image,
                                 read_regions_file)
from bincam.errors import BincamError

LABELS_FILE = "labels.csv"
MANIFEST_FILE = "dataset.json"
REGIONS_FILE = "regions.json"
LABEL_MASKS = "label_masks"
PATH_COLUMN, SPLIT_COLUMN = "path", "split"
BOXES, MASK = "boxes:", "mask:"
SPLIT_IDS = {"train": 0, "valid": 1, "val": 1, "validation": 1, "test": 2, "0": 0, "1": 1,
             "2": 2}
SPLITS = {"train": 0, "valid": 1, "test": 2}
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
POSITIVE, NEGATIVE = {"1", "+1"}, {"0", "-1"}


class Manifest(BaseModel):
    """``dataset.json``: how the dataset is read."""

    model_config = ConfigDict(extra="forbid")

    fit: Literal["stretch", "crop", "pad"] = "stretch"
    regions: str | None = None
    label_masks: str | None = None


def locate_csv(source: Path | str) -> Path:
    """The CSV of ``csv:FILE`` or ``csv:DIR`` (``DIR/labels.csv``)."""
    path = Path(source)
    if path.is_dir():
        path = path / LABELS_FILE
        if not path.is_file():
            raise BincamError(f"no {LABELS_FILE} in {path.parent}; give csv:FILE or a folder "
                              f"holding {LABELS_FILE}")
    elif not path.is_file():
        raise BincamError(f"label file {path} does not exist")
    return path


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return Manifest()
    try:
        return Manifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise BincamError(f"{path}: {where + ': ' if where else ''}"
                          f"{error['msg'].removeprefix('Value error, ')}") from None


def split_of_path(path: str) -> int:
    """0 train, 1 valid, 2 test from ``sha256(path) mod 10`` (0–7, 8, 9)."""
    r = int(hashlib.sha256(path.encode()).hexdigest()[:8], 16) % 10
    return 0 if r < 8 else (1 if r == 8 else 2)


class CsvDataset:
    """Labels, splits and evidence regions of a CSV dataset, and its images on demand.

    Same reading interface as ``data.CelebA`` (``files``, ``labels uint8 [N, K]``, ``splits``,
    ``attributes``, ``load_image``, ``positive_counts``), plus ``fit``, ``regions(i, size)`` (the
    image's own evidence masks) and ``fixed_masks(size)`` (the per-label masks)."""

    kind = "csv"
    landmarks = None

    def __init__(self, source: Path | str, split: str = "all",
                 attributes: Sequence[str] | None = None, image_size: int = 224,
                 limit: int | None = None):
        if split != "all" and split not in SPLITS:
            raise BincamError(f"unknown split {split!r}; use one of all, {', '.join(SPLITS)}")
        self.csv_path = locate_csv(source)
        self.list_dir = self.image_dir = self.csv_path.parent
        self.image_size = int(image_size)
        manifest = read_manifest(self.list_dir)
        self.fit = manifest.fit
        header, rows = self._read_rows()
        names = self._label_columns(header)
        self.all_attributes = names
        self.attributes = self._select(names, attributes)
        col = {c: j for j, c in enumerate(header)}
        self.files = [row[col[PATH_COLUMN]] for _, row in rows]
        self._check_paths(rows, col[PATH_COLUMN])
        self.labels = self._labels(rows, [col[a] for a in self.attributes])
        self.splits = self._splits(rows, col.get(SPLIT_COLUMN))
        self._sizes: dict[int, tuple[int, int]] = {}
        self._boxes: dict[tuple[int, int], np.ndarray] = {}
        self._masks: dict[tuple[int, int], Path] = {}
        self._read_boxes(rows, col)
        self._read_side_regions(manifest)
        self._read_mask_columns(rows, col)
        self._label_masks_path = self._find_label_masks(manifest)
        keep = np.ones(len(self.files), bool) if split == "all" else self.splits == SPLITS[split]
        idx = np.flatnonzero(keep)[:limit]
        self._take(idx)

    # -- reading -------------------------------------------------------------------------------
    def _where(self, line: int, column: str | None = None) -> str:
        return f"{self.csv_path}: row {line}" + (f", column {column!r}" if column else "")

    def _read_rows(self) -> tuple[list[str], list[tuple[int, list[str]]]]:
        try:
            text = self.csv_path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise BincamError(f"{self.csv_path} is not a UTF-8 text file") from None
        reader = csv.reader(text.splitlines())
        header = [h.strip() for h in next(reader, [])]
        if not header or header == [""]:
            raise BincamError(f"{self._where(1)}: empty file; the first row names the columns "
                              f"({PATH_COLUMN}, then one column per label)")
        rows = []
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise BincamError(f"{self._where(reader.line_num)}: {len(row)} cells for "
                                  f"{len(header)} columns")
            rows.append((reader.line_num, [c.strip() for c in row]))
        if not rows:
            raise BincamError(f"{self.csv_path}: no image rows below the header")
        return header, rows

    def _label_columns(self, header: list[str]) -> list[str]:
        seen = set()
        for name in header:
            if name in seen:
                raise BincamError(f"{self._where(1, name)}: the column name repeats")
            seen.add(name)
        if PATH_COLUMN not in header:
            raise BincamError(f"{self._where(1, PATH_COLUMN)}: missing column (the image path, "
                              "relative to the CSV file)")
        labels = [h for h in header if h not in (PATH_COLUMN, SPLIT_COLUMN)
                  and not h.startswith((BOXES, MASK))]
        for name in labels:
            if not NAME.fullmatch(name):
                raise BincamError(f"{self._where(1, name)}: a label name may hold only letters, "
                                  "digits, _ . - (not starting with . or -)")
        if not labels:
            raise BincamError(f"{self._where(1)}: no label column besides {PATH_COLUMN}"
                              f"{', ' + SPLIT_COLUMN if SPLIT_COLUMN in header else ''}")
        for h in header:
            if h.startswith((BOXES, MASK)) and h.split(":", 1)[1] not in labels:
                raise BincamError(f"{self._where(1, h)}: names no label column "
                                  f"({', '.join(labels)})")
        return labels

    def _select(self, names: list[str], attributes: Sequence[str] | None) -> list[str]:
        if attributes is None:
            return list(names)
        chosen = list(attributes)
        unknown = [a for a in chosen if a not in names]
        if unknown:
            raise BincamError(f"unknown label(s) {', '.join(unknown)}; {self.csv_path} has: "
                              f"{', '.join(names)}")
        if len(set(chosen)) != len(chosen):
            raise BincamError(f"label names repeat: {', '.join(chosen)}")
        return chosen

    def _check_paths(self, rows, j: int) -> None:
        first: dict[str, int] = {}
        for line, row in rows:
            rel = row[j]
            if not rel:
                raise BincamError(f"{self._where(line, PATH_COLUMN)}: empty image path")
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise BincamError(f"{self._where(line, PATH_COLUMN)}: {rel!r} must be a path "
                                  f"inside {self.list_dir}, relative to the CSV file")
            if rel in first:
                raise BincamError(f"{self._where(line, PATH_COLUMN)}: image {rel!r} is listed "
                                  f"again (first in row {first[rel]})")
            first[rel] = line
            if not (self.list_dir / rel).is_file():
                raise BincamError(f"{self._where(line, PATH_COLUMN)}: image {rel!r} does not "
                                  f"exist in {self.list_dir}")

    def _labels(self, rows, columns: list[int]) -> np.ndarray:
        out = np.zeros((len(rows), len(columns)), np.uint8)
        for k, j in enumerate(columns):
            convention = None
            for i, (line, row) in enumerate(rows):
                v = row[j]
                if v in POSITIVE:
                    out[i, k] = 1
                    continue
                if v not in NEGATIVE:
                    raise BincamError(f"{self._where(line, self.attributes[k])}: label {v!r} is "
                                      "not binary (use 0/1 or -1/1)")
                if convention is not None and v != convention[0]:
                    raise BincamError(f"{self._where(line, self.attributes[k])}: negative label "
                                      f"{v!r}, but row {convention[1]} wrote {convention[0]!r}; "
                                      "use one convention per column (0/1 or -1/1)")
                convention = convention or (v, line)
        return out

    def _splits(self, rows, j: int | None) -> np.ndarray:
        if j is None:
            return np.array([split_of_path(f) for f in self.files], dtype=np.int64)
        out = np.zeros(len(rows), np.int64)
        for i, (line, row) in enumerate(rows):
            v = row[j].lower()
            if v not in SPLIT_IDS:
                raise BincamError(f"{self._where(line, SPLIT_COLUMN)}: split {row[j]!r} is not "
                                  "train, valid or test")
            out[i] = SPLIT_IDS[v]
        return out

    def _size(self, i: int) -> tuple[int, int]:
        if i not in self._sizes:
            from PIL import Image, UnidentifiedImageError

            path = self.list_dir / self.files[i]
            try:
                with Image.open(path) as img:
                    self._sizes[i] = img.size
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise BincamError(f"image {path} does not decode ({exc.__class__.__name__}); "
                                  "replace or remove it") from None
        return self._sizes[i]

    def _add_boxes(self, i: int, k: int, boxes: np.ndarray, where: str) -> None:
        if not len(boxes):
            return
        w, h = self._size(i)
        bad = outside(boxes, w, h)
        if bad is not None:
            raise BincamError(f"{where}: box {box_text(bad)} reaches outside the image "
                              f"({self.files[i]} is {w}×{h}; boxes need x1 ≤ {w}, y1 ≤ {h})")
        old = self._boxes.get((i, k))
        self._boxes[(i, k)] = boxes if old is None else np.concatenate([old, boxes])

    def _read_boxes(self, rows, col: dict[str, int]) -> None:
        for name in self.all_attributes:
            j = col.get(BOXES + name)
            if j is None:
                continue
            k = self.all_attributes.index(name)
            for i, (line, row) in enumerate(rows):
                try:
                    boxes = parse_boxes(row[j])
                except ValueError as exc:
                    raise BincamError(f"{self._where(line, BOXES + name)}: {exc}") from None
                self._add_boxes(i, k, boxes, self._where(line, BOXES + name))

    def _read_side_regions(self, manifest: Manifest) -> None:
        path = self.list_dir / (manifest.regions or REGIONS_FILE)
        if manifest.regions is None and not path.is_file():
            return
        index = {f: i for i, f in enumerate(self.files)}
        for image, labels in read_regions_file(path).items():
            if image not in index:
                raise BincamError(f"{path}: image {image!r} is not a row of {self.csv_path}")
            for label, boxes in labels.items():
                if label not in self.all_attributes:
                    raise BincamError(f"{path}: image {image!r}, label {label!r}: no such label "
                                      f"column ({', '.join(self.all_attributes)})")
                self._add_boxes(index[image], self.all_attributes.index(label), boxes,
                                f"{path}: image {image!r}, label {label!r}")

    def _read_mask_columns(self, rows, col: dict[str, int]) -> None:
        from PIL import Image, UnidentifiedImageError

        for k, name in enumerate(self.all_attributes):
            j = col.get(MASK + name)
            if j is None:
                continue
            for i, (line, row) in enumerate(rows):
                if not row[j]:
                    continue
                path = self.list_dir / row[j]
                where = self._where(line, MASK + name)
                try:
                    with Image.open(path) as img:
                        size = img.size
                except FileNotFoundError:
                    raise BincamError(f"{where}: mask image {row[j]!r} does not exist") from None
                except (UnidentifiedImageError, OSError, ValueError) as exc:
                    raise BincamError(f"{where}: mask image {row[j]!r} does not decode "
                                      f"({exc.__class__.__name__})") from None
                if size != self._size(i):
                    raise BincamError(f"{where}: mask image is {size[0]}×{size[1]}, the image "
                                      f"{self._size(i)[0]}×{self._size(i)[1]}")
                self._masks[(i, k)] = path

    def _find_label_masks(self, manifest: Manifest) -> Path | None:
        path = self.list_dir / (manifest.label_masks or LABEL_MASKS)
        if manifest.label_masks is not None and not path.exists():
            raise BincamError(f"{self.list_dir / MANIFEST_FILE}: label_masks {path} does not "
                              "exist")
        return path if path.exists() else None

    def _take(self, idx: np.ndarray) -> None:
        """Keep rows ``idx`` (in order); regions re-keyed to the new row numbers."""
        new = {int(i): n for n, i in enumerate(idx)}
        self.files = [self.files[i] for i in idx]
        self.labels, self.splits = self.labels[idx], self.splits[idx]
        self._sizes = {new[i]: s for i, s in self._sizes.items() if i in new}
        self._boxes = {(new[i], k): b for (i, k), b in self._boxes.items() if i in new}
        self._masks = {(new[i], k): p for (i, k), p in self._masks.items() if i in new}

    # -- use -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, i: int) -> Path:
        return self.image_dir / self.files[i]

    def load_image(self, i: int, size: int | None = None) -> np.ndarray:
        """Image ``i`` as ``uint8 [S, S, 3]`` in the frame of the dataset's fit rule."""
        return load_fitted(self.image_path(i), size or self.image_size, self.fit)

    def positive_counts(self) -> np.ndarray:
        return self.labels.sum(axis=0, dtype=np.int64)

    def source_size(self, i: int) -> tuple[int, int]:
        """``(W, H)`` of image ``i`` as stored (read from its header)."""
        return self._size(i)

    @property
    def has_regions(self) -> bool:
        return bool(self._boxes or self._masks)

    @property
    def has_label_masks(self) -> bool:
        return self._label_masks_path is not None

    def regions(self, i: int, size: int, attributes: Sequence[str] | None = None
                ) -> np.ndarray:
        """``bool [K, S, S]``: image ``i``'s own evidence regions per label (union of its boxes
        and mask image, in the fitted frame; all False where it has none)."""
        names = list(attributes or self.attributes)
        out = np.zeros((len(names), size, size), dtype=bool)
        for n, name in enumerate(names):
            k = self.all_attributes.index(name)
            if (i, k) in self._boxes:
                w, h = self._size(i)
                out[n] |= rasterize_boxes(fit_transform(w, h, size, self.fit).boxes(
                    self._boxes[(i, k)]), size)
            if (i, k) in self._masks:
                out[n] |= fit_mask(read_mask_image(self._masks[(i, k)]), size, self.fit)
        return out

    def boxes(self, i: int, attribute: str) -> np.ndarray:
        """Image ``i``'s boxes ``[n, 4]`` for one label, in its own pixels (``[0, 4]``: none)."""
        return self._boxes.get((i, self.all_attributes.index(attribute)), np.zeros((0, 4)))

    def fixed_masks(self, size: int, attributes: Sequence[str] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """``(bool [K, S, S], known [K])``: each label's fixed mask from ``label_masks/`` (in the
        square frame, resized by nearest neighbour), zeros and False where it has none."""
        names = list(attributes or self.attributes)
        masks = np.zeros((len(names), size, size), dtype=bool)
        known = np.zeros(len(names), dtype=bool)
        if self._label_masks_path is not None:
            from bincam.export.explain_masks import load_masks

            found = load_masks(self._label_masks_path, self.all_attributes, size)
            for n, name in enumerate(names):
                if name in found:
                    masks[n], known[n] = found[name], True
        return masks, known

    def digest(self) -> str:
        """sha256 of what decides an audit beyond files and labels: fit rule and regions."""
        h = hashlib.sha256(f"{self.fit}\n".encode())
        for key in sorted(self._boxes):
            h.update(f"{key}".encode() + self._boxes[key].tobytes())
        for key in sorted(self._masks):
            h.update(f"{key}".encode() + self._masks[key].read_bytes())
        if self._label_masks_path is not None:
            paths = sorted(self._label_masks_path.iterdir()) if self._label_masks_path.is_dir() \
                else [self._label_masks_path]
            for p in paths:
                h.update(p.name.encode() + p.read_bytes())
        return h.hexdigest()

    def describe(self) -> dict:
        """What a checkpoint card records about the training data."""
        return {"kind": "csv", "file": str(self.csv_path), "labels": list(self.attributes),
                "fit": self.fit, "images_with_boxes": len({i for i, _ in self._boxes}),
                "images_with_masks": len({i for i, _ in self._masks}),
                "label_masks": self._label_masks_path is not None}


__all__ = ["CsvDataset", "FITS", "LABELS_FILE", "locate_csv", "split_of_path"]
