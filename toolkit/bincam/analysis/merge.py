"""Reduce one model's shards, in image order and one shard in memory at a time.

Columns go to ``OUT/results/NAME/COLUMN.npy`` (``np.load(..., mmap_mode="r")`` reads them without
loading), the aggregate sums and the average-map sums are added up shard by shard.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bincam.analysis import store
from bincam.analysis.aggregate import add_sums, shard_sums
from bincam.analysis.compute import Sums
from bincam.errors import BincamError
from bincam.files import atomic_folder


def merge_model(out: Path, name: str, n: int, shard_size: int, majority: np.ndarray
                ) -> tuple[dict, Sums, float]:
    """``(aggregate sums, average-map sums, seconds the shards took)``; writes the columns."""
    columns, totals, maps, seconds = {}, None, None, 0.0
    with atomic_folder(out / "results" / name) as tmp:
        for start, stop in store.shard_ranges(n, shard_size):
            path = store.shard_path(out, name, start, stop)
            if not path.is_file():
                raise BincamError(f"shard {path.name} of model {name} is missing; rerun the "
                                  "same command to compute it")
            shard = store.read_shard(path)
            if not np.array_equal(shard["index"], np.arange(start, stop)):
                raise BincamError(f"shard {path} holds other images than its name says; "
                                  "delete it and rerun")
            seconds += float(shard["seconds"])
            cols = {k: v for k, v in shard.items() if not k.startswith("sums_")
                    and k != "seconds"}
            for key, value in cols.items():
                if key not in columns:
                    columns[key] = np.lib.format.open_memmap(
                        tmp / f"{key}.npy", mode="w+", dtype=value.dtype,
                        shape=(n, *value.shape[1:]))
                columns[key][start:stop] = value
            totals = add_sums(totals, shard_sums(cols, majority))
            part = Sums(*(shard[f"sums_{k}"] for k in ("scaled", "shift", "count", "image")))
            if maps is None:
                maps = part
            else:
                maps.add(part)
        for column in columns.values():
            column.flush()
        columns.clear()  # the memory maps close before the folder is renamed
    return totals, maps, seconds
