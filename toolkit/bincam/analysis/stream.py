"""Images (and synthetic cue masks, or a CSV dataset's evidence regions) of a dataset, decoded in
threads a few batches ahead.

Memory is bounded by ``prefetch`` batches whatever the dataset's size. Pillow releases the GIL
while it decodes, so the threads overlap with the engine.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np

from bincam.data.celeba import CelebA
from bincam.data.dataset import load_at
from bincam.data.synth import CueIndex


class ImageStream:
    """Batches ``(index, images uint8 [B, 3, S, S], cue projections or None, region projections
    or None)``; ``project`` turns one image's cue primitives into what the cue PE needs
    (``compute.CueProjector``), ``regions`` image ``i`` into its own regions' projections
    (``compute.RegionProjector``)."""

    def __init__(self, ds: CelebA, size: int, workers: int = 2, prefetch: int = 2,
                 cues: CueIndex | None = None, project: Callable | None = None,
                 regions: Callable | None = None):
        self.ds, self.size, self.workers, self.prefetch = ds, size, max(1, workers), prefetch
        self.cues, self.project, self.regions = cues, project, regions

    def _one(self, i: int):
        image = load_at(self.ds, i, self.size).transpose(2, 0, 1)
        cue = None if self.cues is None else self.project(self.cues.cues(self.ds.files[i]))
        return image, cue, None if self.regions is None else self.regions(i)

    def batches(self, index_batches: list[np.ndarray]) -> Iterator[tuple]:
        with ThreadPoolExecutor(self.workers) as pool:
            pending: deque = deque()
            todo = iter(index_batches)
            for idx in todo:
                pending.append((idx, [pool.submit(self._one, int(i)) for i in idx]))
                if len(pending) > self.prefetch:
                    break
            while pending:
                idx, futures = pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt, [pool.submit(self._one, int(i)) for i in nxt]))
                items = [f.result() for f in futures]
                images = np.stack([im for im, _, _ in items])
                cues = None if self.cues is None else tuple(
                    np.stack([c[j] for _, c, _ in items]) for j in range(2))
                regions = None if self.regions is None else tuple(
                    np.stack([r[j] for _, _, r in items]) for j in range(2))
                yield idx, images, cues, regions
