"""Write a synthetic-faces dataset in torchvision's CelebA layout.

``OUT/celeba/`` receives ``img_align_celeba/NNNNNN.jpg`` (square, pre-aligned), the five CelebA list
files, ``cues.jsonl`` (per image: the primitives of every drawn cue, in the 224 frame; rebuild pixel
masks with ``cue_masks``) and ``bincam_synth.json`` (how it was made). Image ``i`` depends only on
``(seed, i)``, so any number of worker processes gives the same bytes. The folder is built under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import io
import json
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from pydantic import BaseModel, StrictStr, ValidationError
from PIL import Image

from bincam.attributes import ATTRIBUTES, FRAME
from bincam.data.celeba import ATTR_FILE, LANDMARK_FILE, PARTITION_FILE
from bincam.data.listfiles import atomic_write_text, write_table
from bincam.data.synth_labels import sample_labels
from bincam.data.synth_render import cue_mask, render_face
from bincam.errors import BincamError
from bincam.files import atomic_folder

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_CHOICES = ("all", "train", "valid", "test")
CUES_FILE = "cues.jsonl"
MANIFEST = "bincam_synth.json"
LANDMARK_COLUMNS = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
                    "leftmouth_x leftmouth_y rightmouth_x rightmouth_y").split()


def image_name(i: int) -> str:
    return f"{i + 1:06d}.jpg"


def _render_one(args: tuple[int, int, np.ndarray, int]) -> tuple[bytes, np.ndarray, dict]:
    seed, i, labels, size = args
    img, landmarks, cues = render_face(labels, np.random.default_rng([seed, i]))
    if size != FRAME:
        img = img.resize((size, size), Image.BILINEAR)
        landmarks = landmarks * size / FRAME
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue(), landmarks, cues


def synthesize(out: Path | str, n: int, seed: int = 0, size: int = FRAME, workers: int = 1,
               overwrite: bool = False, progress: Callable[[int], None] | None = None,
               split: str = "all") -> Path:
    """Generate ``n`` faces into ``out/celeba`` and return that folder.

    ``split``: ``all`` partitions 80/10/10 % like CelebA; ``train``/``valid``/``test`` puts every
    image in that one partition (e.g. a large fresh test set for an audit)."""
    if split not in SPLIT_CHOICES:
        raise BincamError(f"--split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    if n < 1:
        raise BincamError(f"--n must be at least 1, got {n}")
    if not 32 <= size <= 4096:
        raise BincamError(f"--size must be between 32 and 4096 pixels, got {size}")
    if workers < 1:
        raise BincamError(f"--workers must be at least 1, got {workers}")
    out = Path(out)
    final = out / "celeba"
    if final.exists() and not overwrite:
        raise BincamError(f"{final} already exists; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_folder(final) as tmp:
        (tmp / "img_align_celeba").mkdir()
        labels = sample_labels(n, np.random.default_rng(seed))
        landmarks = np.zeros((n, 10))
        names = [image_name(i) for i in range(n)]
        with open(tmp / CUES_FILE, "w") as cues_file:
            for i, (jpeg, lm, cues) in enumerate(_rendered(seed, labels, size, workers)):
                (tmp / "img_align_celeba" / names[i]).write_bytes(jpeg)
                landmarks[i] = lm
                cues_file.write(json.dumps({"image": names[i], "cues": cues},
                                           separators=(",", ":")) + "\n")
                if progress:
                    progress(i + 1)
        _write_lists(tmp, names, labels, landmarks, size, split)
        fractions = SPLIT_FRACTIONS if split == "all" else tuple(
            float(s == split) for s in SPLIT_CHOICES[1:])
        manifest = {"generator": "bincam data synth", "n": n, "seed": seed, "size": size,
                    "split_fractions": fractions, "cue_frame": FRAME,
                    "cues": "per image: attribute -> primitives [kind, coords, width] drawn as "
                            "evidence of its label (width 0 = filled), in the 224 frame"}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2))
    return final


def _rendered(seed: int, labels: np.ndarray, size: int, workers: int) -> Iterator:
    jobs = ((seed, i, labels[i], size) for i in range(len(labels)))
    if workers <= 1:
        yield from map(_render_one, jobs)
        return
    with Pool(workers) as pool:
        yield from pool.imap(_render_one, jobs, chunksize=64)


def split_ids(n: int, split: str = "all") -> np.ndarray:
    """Partition ids (0 train, 1 valid, 2 test) in contiguous blocks, as CelebA does (or all in
    one ``split``)."""
    if split != "all":
        return np.full(n, SPLIT_CHOICES.index(split) - 1, dtype=np.int64)
    n_train = int(round(n * SPLIT_FRACTIONS[0]))
    n_valid = int(round(n * SPLIT_FRACTIONS[1]))
    ids = np.full(n, 2, dtype=np.int64)
    ids[:n_train] = 0
    ids[n_train:n_train + n_valid] = 1
    return ids


def _write_lists(folder: Path, names: list[str], labels: np.ndarray, landmarks: np.ndarray,
                 size: int, split: str = "all") -> None:
    write_table(folder / ATTR_FILE, names, labels.astype(np.int64) * 2 - 1, columns=ATTRIBUTES,
                counted=True, width=2)
    write_table(folder / PARTITION_FILE, names, split_ids(len(names), split), counted=False)
    write_table(folder / LANDMARK_FILE, names, np.rint(landmarks).astype(np.int64),
                columns=LANDMARK_COLUMNS, counted=True, width=4)
    s = size / FRAME
    box = np.rint(np.array([56, 46, 112, 150]) * s).astype(np.int64)  # x, y, width, height of the face
    write_table(folder / "list_bbox_celeba.txt", names, np.tile(box, (len(names), 1)),
                columns=("x_1", "y_1", "width", "height"), header_prefix="image_id ",
                counted=True, width=4)
    write_table(folder / "identity_CelebA.txt", names, np.arange(1, len(names) + 1), counted=False)


def cues_path(dataset_dir: Path | str) -> Path | None:
    """The ``cues.jsonl`` of a synthetic dataset (given its root or its ``celeba`` folder)."""
    folder = Path(dataset_dir)
    return next((p for p in (folder / CUES_FILE, folder / "celeba" / CUES_FILE) if p.is_file()),
                None)


def read_cues(dataset_dir: Path | str) -> dict[str, dict[str, list]]:
    """Cue primitives by image name and attribute, from a synthetic dataset's ``cues.jsonl``."""
    path = cues_path(dataset_dir)
    if path is None:
        raise BincamError(f"no {CUES_FILE} in {dataset_dir}: only datasets written by `bincam "
                          "data synth` carry cue ground truth")
    out = {}
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            rec = cue_record(line, path, number)
            out[rec.image] = rec.cues
    return out


class CueRecord(BaseModel):
    """One line of ``cues.jsonl``: an image name and its cue primitives by attribute."""
    image: StrictStr
    cues: dict[str, list]


def cue_record(line: bytes, path: Path, number: int) -> CueRecord:
    """Parse line ``number`` of ``path``; a broken line is one error naming the file and line."""
    try:
        return CueRecord.model_validate_json(line)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise BincamError(f"{path}:{number}: not a cue record "
                          f"({where + ': ' if where else ''}{error['msg']}); restore the file "
                          "or regenerate the dataset") from None


class CueIndex:
    """Random access to ``cues.jsonl`` by image name, keeping only byte offsets in memory."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.offsets: dict[str, int] = {}
        with open(self.path, "rb") as fh:
            offset = 0
            for number, line in enumerate(fh, start=1):
                name = cue_record(line, self.path, number).image
                if name in self.offsets:
                    raise BincamError(f"{self.path}:{number}: a second record for image {name}")
                self.offsets[name] = offset
                offset += len(line)

    def cues(self, name: str) -> dict[str, list]:
        """The primitives of every cue drawn on image ``name`` (``{}`` if it has none)."""
        if name not in self.offsets:
            raise BincamError(f"{self.path} has no record for image {name}")
        with open(self.path, "rb") as fh:
            fh.seek(self.offsets[name])
            return CueRecord.model_validate_json(fh.readline()).cues


def cue_masks(cues: dict[str, list], attributes: list[str], size: int = FRAME) -> np.ndarray:
    """Boolean ``[K, size, size]``: where each attribute's cue was drawn (all False if none)."""
    out = np.zeros((len(attributes), size, size), dtype=bool)
    for k, a in enumerate(attributes):
        if cues.get(a):
            out[k] = cue_mask(cues[a], size)
    return out
