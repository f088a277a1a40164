"""Benchmark images: synthetic faces rendered in memory (default), any image folder, or uniform
random pixels when asked. Never zeros: an all-zero input hides wrong gradients and lucky caches.
Returns decoded ``uint8 [N, S, S, 3]``, so preprocessing stays inside the end-to-end scope."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bincam.errors import BincamError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def synthetic_faces(n: int, size: int, seed: int = 0) -> np.ndarray:
    from bincam.data.synth_labels import sample_labels
    from bincam.data.synth_render import render_face

    labels = sample_labels(n, np.random.default_rng(seed))
    faces = []
    for i in range(n):
        img = render_face(labels[i], np.random.default_rng([seed, i]))[0]
        faces.append(np.asarray(img.resize((size, size), Image.BILINEAR) if img.size != (size, size)
                                else img))
    return np.stack(faces)


def folder_images(folder: Path, n: int, size: int) -> np.ndarray:
    from bincam.data.celeba import load_aligned

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BincamError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return np.stack([load_aligned(files[i % len(files)], size) for i in range(n)])


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Uniform pixels in 1..255 (never an all-zero image)."""
    return np.random.default_rng(seed).integers(1, 256, (n, size, size, 3), dtype=np.uint8)


def bench_images(source: str, n: int, size: int, seed: int = 0) -> np.ndarray:
    """``source``: ``synth`` (faces rendered in memory), ``random``, or an image folder."""
    if n < 1:
        raise BincamError("the benchmark needs at least one image")
    if source == "synth":
        return synthetic_faces(n, size, seed)
    if source == "random":
        return random_images(n, size, seed)
    folder = Path(source)
    if not folder.is_dir():
        raise BincamError(f"--images must be synth, random or an image folder; {source!r} is none")
    return folder_images(folder, n, size)


def to_batch(images: np.ndarray) -> np.ndarray:
    """Decode-free preprocessing: ``uint8 [B,S,S,3]`` → ``float32 [B,3,S,S]`` in [0, 1]."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)
