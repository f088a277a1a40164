"""The CelebA reader.

Accepts two layouts:
(a) torchvision's: ``ROOT/celeba/{img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt,
    list_landmarks_align_celeba.txt}`` (``ROOT/celeba`` itself may be given), with CelebA's
    178×218 aligned images;
(b) a pre-aligned folder: the same list files beside a folder of square aligned images
    (``img_align_celeba/``, ``aligned_224x224/`` or ``images/``, as ``bincam data synth`` writes)
    or beside the images themselves.

Images are decoded with Pillow as RGB and brought into the square AFFACT frame: a 178×218 CelebA
image is cropped so that the 224 frame equals CelebA's coordinates shifted by x+24, y−10 (zero
padding outside), then resized; a square image is only resized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from bincam.attributes import FRAME, check_attributes
from bincam.data.fit import open_rgb
from bincam.data.frontal import frontal_mask
from bincam.data.listfiles import read_table
from bincam.errors import BincamError

SPLITS = {"train": 0, "valid": 1, "test": 2}
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
LANDMARK_FILE = "list_landmarks_align_celeba.txt"
IMAGE_DIRS = ("img_align_celeba", "aligned_224x224", "images")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CELEBA_ALIGNED_SIZE = (178, 218)
CELEBA_TO_FRAME_SHIFT = (24, -10)  # x, y: a CelebA-aligned point p lies at p + shift in the 224 frame
LAYOUT_HELP = ("expected ROOT/celeba/ (or ROOT itself) holding list_attr_celeba.txt, "
               "list_eval_partition.txt and an image folder img_align_celeba/")


def locate(root: Path | str) -> tuple[Path, Path]:
    """Return (folder with the list files, image folder) for a dataset root, or raise."""
    root = Path(root)
    if not root.is_dir():
        raise BincamError(f"dataset folder {root} does not exist; {LAYOUT_HELP}")
    for base in (root / "celeba", root):
        if (base / ATTR_FILE).is_file():
            for name in IMAGE_DIRS:
                if (base / name).is_dir():
                    return base, base / name
            if any(p.suffix.lower() in IMAGE_SUFFIXES for p in base.iterdir()):
                return base, base  # pre-aligned images beside the list files
            raise BincamError(f"no images in {base}: expected a folder {', '.join(IMAGE_DIRS)} "
                              "or the images beside the list files")
    raise BincamError(f"no {ATTR_FILE} in {root} or {root / 'celeba'}; {LAYOUT_HELP}")


class CelebA:
    """Labels, splits and landmarks of a CelebA-style dataset, and its images on demand.

    ``labels`` is ``uint8 [N, K]`` in {0, 1} (CelebA's −1 → 0) for the selected ``attributes``;
    ``landmarks`` is ``float [N, 10]`` in the file's own frame (or ``None`` without the file).
    """

    def __init__(self, root: Path | str, split: str = "all", attributes: Sequence[str] | None = None,
                 frontal: bool = False, image_size: int = FRAME):
        if split != "all" and split not in SPLITS:
            raise BincamError(f"unknown split {split!r}; use one of all, {', '.join(SPLITS)}")
        self.list_dir, self.image_dir = locate(root)
        self.image_size = int(image_size)
        attr = read_table(self.list_dir / ATTR_FILE, counted=True, header=True)
        check_attributes(attr.columns)
        self.attributes = check_attributes(attributes if attributes is not None else attr.columns,
                                           attr.columns)
        bad = np.argwhere((attr.values != 1) & (attr.values != -1))
        if len(bad):
            row, col = bad[0]
            raise BincamError(f"{attr.where(self.list_dir / ATTR_FILE, row)}: attribute values "
                              f"must be 1 or -1, got {attr.values[row, col]} for "
                              f"{attr.columns[col]}")
        columns = [attr.columns.index(a) for a in self.attributes]
        keep = np.ones(len(attr.names), dtype=bool)
        partition = read_table(self.list_dir / PARTITION_FILE, counted=False, header=False,
                               n_values=1)
        unknown = np.flatnonzero(~np.isin(partition.values[:, 0], list(SPLITS.values())))
        if len(unknown):
            row = unknown[0]
            raise BincamError(f"{partition.where(self.list_dir / PARTITION_FILE, row)}: partition "
                              f"values must be 0 (train), 1 (valid) or 2 (test), got "
                              f"{partition.values[row, 0]} for {partition.names[row]}")
        split_of = dict(zip(partition.names, partition.values[:, 0]))
        missing = [n for n in attr.names if n not in split_of]
        if missing:
            raise BincamError(f"{self.list_dir / PARTITION_FILE} has no split for {len(missing)} "
                              f"image(s), e.g. {missing[0]}")
        splits = np.array([split_of[n] for n in attr.names])
        if split != "all":
            keep &= splits == SPLITS[split]
        self.landmarks = self._read_landmarks(attr.names)
        if frontal:
            if self.landmarks is None:
                raise BincamError(f"the frontal filter needs {self.list_dir / LANDMARK_FILE}")
            keep &= frontal_mask(self.landmarks)
        idx = np.flatnonzero(keep)
        self.files = [attr.names[i] for i in idx]
        self.splits = splits[idx]
        self.labels = (attr.values[idx][:, columns] > 0).astype(np.uint8)
        if self.landmarks is not None:
            self.landmarks = self.landmarks[idx]

    def _read_landmarks(self, names: list[str]) -> np.ndarray | None:
        path = self.list_dir / LANDMARK_FILE
        if not path.is_file():
            return None
        table = read_table(path, counted=True, header=True)
        if table.values.shape[1] != 10:
            raise BincamError(f"{path}: expected 10 landmark columns, got {table.values.shape[1]}")
        row_of = {n: i for i, n in enumerate(table.names)}
        missing = [n for n in names if n not in row_of]
        if missing:
            raise BincamError(f"{path} has no landmarks for {len(missing)} image(s), "
                              f"e.g. {missing[0]}")
        return table.values[[row_of[n] for n in names]].astype(np.float64)

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, i: int) -> Path:
        return self.image_dir / self.files[i]

    def load_image(self, i: int) -> np.ndarray:
        """Image ``i`` as ``uint8 [S, S, 3]`` RGB in the aligned frame (S = ``image_size``)."""
        return load_aligned(self.image_path(i), self.image_size)

    def positive_counts(self) -> np.ndarray:
        """Number of positive labels per selected attribute, ``int64 [K]``."""
        return self.labels.sum(axis=0, dtype=np.int64)


def load_aligned(path: Path, size: int = FRAME) -> np.ndarray:
    """Decode one image with Pillow, as RGB, in the square aligned frame of side ``size``."""
    img = open_rgb(path)
    try:
        return np.array(to_frame(img, size))
    except BincamError as exc:
        raise BincamError(f"{path}: {exc}") from None


def to_frame(img: Image.Image, size: int = FRAME) -> Image.Image:
    """Bring a CelebA-aligned (178×218) or square aligned image into the ``size``² frame."""
    if img.size == CELEBA_ALIGNED_SIZE:
        dx, dy = CELEBA_TO_FRAME_SHIFT
        img = img.crop((-dx, -dy, FRAME - dx, FRAME - dy))
    elif img.size[0] != img.size[1]:
        raise BincamError(f"image of size {img.size[0]}×{img.size[1]} is neither CelebA-aligned "
                          "(178×218) nor square pre-aligned; align and crop it to a square face "
                          "first")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return img
