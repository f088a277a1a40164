"""A second synthetic task with ground truth: one-logit "lesion present" on textured grey images,
written in the CSV layout (``data.csvset``), so the generic path is tested and demonstrated
without private data (``bincam data synth-task``).

Every image is a grey texture (smooth noise at four scales plus a vignette). A *lesion* image
carries one bright elliptical blob with centre ``(cx, cy)`` in ``[0.3, 0.75]·S × [0.4, 0.75]·S`` and
radii in ``[0.07, 0.12]·S``, contrast ``Δ ∈ [40, 60]`` grey levels (flat top, speckled); its box (``boxes:lesion``,
``⌊c − r⌋ … ⌈c + r⌉``) holds every lesion pixel. Exactly ``round(prevalence·n_split)`` images of each
split have a lesion. The *confound*: a bright tag (a square with a dark L, side ``0.16·S``) in a
top corner, drawn on a share ``confound`` of the lesion images and on none without a lesion, so
it is a shortcut that predicts the label; its box goes to ``markers.json`` (``regions.json``'s
format, label ``marker``) and never into ``labels.csv``. Lesion and tag never overlap.

Layout: ``OUT/labels.csv`` (``path,lesion,split,boxes:lesion``), ``OUT/images/NNNNNN.png``,
``OUT/markers.json``, ``OUT/dataset.json`` (fit ``stretch``), ``OUT/bincam_synth_task.json``.
Image ``i`` depends only on ``(seed, i)``; the folder appears whole (temporary name, rename).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from bincam.errors import BincamError
from bincam.files import atomic_folder, check_replaceable

LABEL = "lesion"
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_NAMES = ("train", "valid", "test")
MARKERS_FILE = "markers.json"
MANIFEST = "bincam_synth_task.json"


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey background ``float [S, S]`` around 120: noise at 4 scales (bicubic) and a vignette."""
    img = np.zeros((size, size))
    for cells, amp in ((4, 1.0), (8, 0.6), (16, 0.35), (size, 0.2)):
        noise = rng.normal(size=(cells, cells)).astype(np.float32)
        img += amp * np.asarray(Image.fromarray(noise).resize((size, size), Image.BICUBIC))
    img = (img - img.mean()) / (img.std() + 1e-9)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    vignette = -60 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    return 128 + 20 * img + vignette - vignette.mean()


def _lesion(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[float]]:
    """``(added intensity float [S, S], box [x0, y0, x1, y1])`` of one elliptical blob."""
    cx, cy = rng.uniform(0.3, 0.75) * size, rng.uniform(0.4, 0.75) * size
    rx, ry = rng.uniform(0.07, 0.12, 2) * size
    delta = rng.uniform(40, 60)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    d2 = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    speckle = 1 + 0.25 * rng.normal(size=(size, size))
    blob = delta * np.clip(2 * (1 - d2), 0, 1) * speckle * (d2 < 1)
    box = [max(math.floor(cx - rx), 0), max(math.floor(cy - ry), 0),
           min(math.ceil(cx + rx), size), min(math.ceil(cy + ry), size)]
    return blob, [float(v) for v in box]


def _marker(rng: np.random.Generator, img: np.ndarray) -> list[float]:
    """Draw the tag in a top corner of ``img`` (in place); its box."""
    size = img.shape[0]
    m = max(4, round(0.16 * size))
    x0 = int(rng.integers(1, max(2, round(0.06 * size))))
    if rng.random() < 0.5:
        x0 = size - m - x0
    y0 = int(rng.integers(1, max(2, round(0.06 * size))))
    img[y0:y0 + m, x0:x0 + m] = 240
    bar = max(1, m // 5)
    img[y0 + bar:y0 + m - bar, x0 + bar:x0 + 2 * bar] = 30            # the L's stem
    img[y0 + m - 2 * bar:y0 + m - bar, x0 + bar:x0 + m - bar] = 30    # its foot
    return [float(x0), float(y0), float(x0 + m), float(y0 + m)]


def render_task_image(rng: np.random.Generator, size: int, lesion: bool, marker: bool
                      ) -> tuple[Image.Image, list[float] | None, list[float] | None]:
    """``(grey image, lesion box or None, marker box or None)``."""
    img = _texture(rng, size)
    lesion_box = marker_box = None
    if lesion:
        blob, lesion_box = _lesion(rng, size)
        img = img + blob
    if marker:
        marker_box = _marker(rng, img)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)), lesion_box, marker_box


def split_sizes(n: int) -> list[int]:
    n_train = int(round(n * SPLIT_FRACTIONS[0]))
    n_valid = int(round(n * SPLIT_FRACTIONS[1]))
    return [n_train, n_valid, n - n_train - n_valid]


def task_labels(n: int, prevalence: float, confound: float, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(split ids, lesion [n] bool, marker [n] bool)``: ``round(prevalence·n_split)`` lesions per
    split at random positions; markers on a share ``confound`` of the lesion images (rounded)."""
    splits, lesion, marker = [], [], []
    for s, count in enumerate(split_sizes(n)):
        pos = int(round(prevalence * count))
        les = np.zeros(count, bool)
        les[rng.permutation(count)[:pos]] = True
        mark = np.zeros(count, bool)
        idx = np.flatnonzero(les)
        mark[rng.permutation(idx)[:int(round(confound * len(idx)))]] = True
        splits.append(np.full(count, s))
        lesion.append(les)
        marker.append(mark)
    return np.concatenate(splits), np.concatenate(lesion), np.concatenate(marker)


def synthesize_task(out: Path | str, n: int, seed: int = 0, size: int = 64,
                    prevalence: float = 0.1, confound: float = 0.0, overwrite: bool = False,
                    progress: Callable[[int], None] | None = None) -> Path:
    """Write the task into ``out`` (which becomes the folder holding ``labels.csv``)."""
    if n < 10:
        raise BincamError(f"--n must be at least 10 (every split needs images), got {n}")
    if size < 32:
        raise BincamError(f"--size must be at least 32 pixels, got {size}")
    if not 0 < prevalence < 1:
        raise BincamError(f"--prevalence must lie strictly between 0 and 1, got {prevalence}")
    if not 0 <= confound <= 1:
        raise BincamError(f"--confound must lie in [0, 1], got {confound}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise BincamError(f"{out} already exists; choose another --out or pass --overwrite")
    check_replaceable(out, "--out", "labels.csv")  # --overwrite replaces a task, nothing else
    splits, lesion, marker = task_labels(n, prevalence, confound, np.random.default_rng(seed))
    with atomic_folder(out) as tmp:
        (tmp / "images").mkdir()
        rows, markers = [], {}
        for i in range(n):
            img, lbox, mbox = render_task_image(np.random.default_rng([seed, i]), size,
                                                bool(lesion[i]), bool(marker[i]))
            name = f"images/{i + 1:06d}.png"
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            (tmp / name).write_bytes(buf.getvalue())
            rows.append([name, int(lesion[i]), SPLIT_NAMES[splits[i]],
                         "" if lbox is None else ",".join(f"{v:g}" for v in lbox)])
            markers[name] = {"marker": [] if mbox is None else [mbox]}
            if progress:
                progress(i + 1)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", LABEL, "split", f"boxes:{LABEL}"])
        writer.writerows(rows)
        (tmp / "labels.csv").write_text(buf.getvalue())
        (tmp / MARKERS_FILE).write_text(json.dumps(markers, separators=(",", ":")))
        (tmp / "dataset.json").write_text(json.dumps({"fit": "stretch"}, indent=1))
        (tmp / MANIFEST).write_text(json.dumps({
            "generator": "bincam data synth-task", "n": n, "seed": seed, "size": size,
            "prevalence": prevalence, "confound": confound, "split_sizes": split_sizes(n),
            "lesions": int(lesion.sum()), "markers": int(marker.sum()),
            "markers_file": MARKERS_FILE}, indent=1))
    return out
