"""Training data: a dataset spec (``synth:DIR`` / ``celeba:DIR``) read into memory as uint8 tensors.

Images are decoded once with Pillow (threads; decoding releases the GIL) into ``uint8 [N, 3, S, S]``
at the training size. That keeps epochs cheap on a CPU and makes batches a pure index operation,
which is what makes training deterministic for a seed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

from bincam.data.celeba import CelebA
from bincam.data.spec import DATA_KINDS, open_split, parse_data_spec
from bincam.errors import BincamError

__all__ = ["DATA_KINDS", "open_split", "parse_data_spec", "load_images", "to_input"]

MEMORY_LIMIT_BYTES = 12 * 2 ** 30


def load_images(ds: CelebA, workers: int = 2,
                progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Decode every image of ``ds`` into ``uint8 [N, 3, S, S]``."""
    s = ds.image_size
    need = len(ds) * 3 * s * s
    if need > MEMORY_LIMIT_BYTES:
        raise BincamError(f"{len(ds)} images at {s}px need {need / 2 ** 30:.1f} GiB in memory; "
                          "lower --image-size or --max-train-images")
    out = torch.empty((len(ds), s, s, 3), dtype=torch.uint8)

    def one(i: int) -> int:
        out[i] = torch.from_numpy(ds.load_image(i))
        return i

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for done, _ in enumerate(pool.map(one, range(len(ds))), start=1):
            if progress and (done % 256 == 0 or done == len(ds)):
                progress(done)
    return out.permute(0, 3, 1, 2).contiguous()


def to_input(batch: torch.Tensor) -> torch.Tensor:
    """uint8 images → float32 in [0, 1], the range every bincam net takes."""
    return batch.float().div_(255.0)
