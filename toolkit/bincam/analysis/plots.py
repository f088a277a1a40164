"""The audit's figures with matplotlib (Agg, no display): PNG bytes, written atomically by the
caller.

- ``error_bars``: per attribute, minority-class error upwards and majority-class error downwards,
  one panel per model;
- ``pe_by_class``: mean PE of minority- and majority-predicted images per attribute and model;
- ``average_cam_grid``: the mean final map per attribute and predicted class over the mean input
  image, with the attribute's mask outlined.
"""

from __future__ import annotations

import io

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _values(model: dict, order: list[str], key: str) -> np.ndarray:
    """``key`` of each attribute in ``order``; NaN (no bar) where the model lacks the attribute
    (models with different attribute sets in one audit) or the figure."""
    per = model["per_attribute"]
    return np.array([np.nan if per.get(a, {}).get(key) is None else per[a][key] for a in order])


XLABEL = "attribute (rarest minority class first)"


def _bars_per_model(record: dict, order: list[str], series, ylim, ylabel: str,
                    downward: bool = False) -> bytes:
    """One panel per model; ``series``: ``(figure key, label, colour, x offset, width, sign)``;
    ``downward``: bars below 0 are positive values drawn down, so ticks read ``|y|``."""
    from matplotlib.ticker import FuncFormatter

    plt = _pyplot()
    names = list(record["models"])
    fig, axes = plt.subplots(len(names), 1, figsize=(13, 3.2 * len(names)), squeeze=False,
                             sharex=True)
    x = np.arange(len(order))
    for ax, name in zip(axes[:, 0], names):
        for key, label, colour, offset, width, sign in series:
            ax.bar(x + offset, sign * _values(record["models"][name], order, key), width=width,
                   color=colour, label=label)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel)
        if downward:
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{abs(v):.2f}"))
        ax.set_title(name)
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=8)  # off the bars
    axes[-1, 0].set_xticks(x, order, rotation=90, fontsize=8)
    axes[-1, 0].set_xlim(-0.7, len(order) - 0.3)
    axes[-1, 0].set_xlabel(XLABEL)
    return _png(fig)


def _error_limit(record: dict, order: list[str]) -> float:
    """The y range of the error panels: the largest error, rounded up to a quarter (≤ 1)."""
    top = np.nanmax([np.nan_to_num(_values(m, order, k)).max(initial=0)
                     for m in record["models"].values()
                     for k in ("minority_error", "majority_error")] + [0.0])
    return float(min(1.0, max(0.25, np.ceil(top * 4) / 4)))


def error_bars(record: dict, order: list[str]) -> bytes:
    lim = _error_limit(record, order)
    return _bars_per_model(record, order, [
        ("minority_error", "minority-class error (up)", "tab:red", 0, 0.8, 1),
        ("majority_error", "majority-class error (down)", "tab:blue", 0, 0.8, -1)],
        (-lim, lim), "error rate", downward=True)


def pe_by_class(record: dict, order: list[str]) -> bytes:
    return _bars_per_model(record, order, [
        ("pe_minority", "minority-predicted", "tab:red", -0.2, 0.4, 1),
        ("pe_majority", "majority-predicted", "tab:blue", 0.2, 0.4, 1)],
        (0, 1), "proportional energy")


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (and mask pixels on the frame's edge)."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def average_cam_grid(maps: np.ndarray, counts: np.ndarray, attributes: list[str],
                     masks: np.ndarray, background: np.ndarray, title: str,
                     per_row: int = 5) -> bytes:
    """``maps [2, K, S, S]`` (class 0 = predicted negative), ``counts [2, K]``, ``masks bool
    [K, S, S]``, ``background uint8-valued [3, S, S]``. One mosaic (JET over the grey mean image,
    half and half; white mask outline), so it stays one image however many attributes; each
    attribute's full name over its pair of tiles, the class and count over each tile."""
    import matplotlib

    plt = _pyplot()
    jet = matplotlib.colormaps["jet"]
    k, size = len(attributes), maps.shape[-1]
    per_row = max(1, min(per_row, k))
    rows = -(-k // per_row)
    gap, pair_gap = max(2, size // 32), max(4, size // 8)
    band = int(0.42 * size)                                   # the two text lines above a pair
    tile_y, pair_x = size + band, 2 * size + gap + pair_gap
    mosaic = np.ones((rows * tile_y, per_row * pair_x - pair_gap, 3))
    gray = np.repeat((background.mean(0) / 255.0)[..., None], 3, axis=2)
    for i in range(k):
        for j, cls in enumerate((1, 0)):
            img = gray.copy()
            if counts[cls, i] > 0:
                img = 0.5 * img + 0.5 * jet(np.clip(maps[cls, i], 0, 1))[..., :3]
            img[_outline(masks[i])] = 1.0
            y, x = (i // per_row) * tile_y + band, (i % per_row) * pair_x + j * (size + gap)
            mosaic[y:y + size, x:x + size] = img
    width = 2.6 * per_row                                     # inches: ~1.2 in per tile
    fig, ax = plt.subplots(figsize=(width, width * mosaic.shape[0] / mosaic.shape[1]))
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    for i, attr in enumerate(attributes):
        y0, x0 = (i // per_row) * tile_y, (i % per_row) * pair_x
        ax.text(x0 + size + gap / 2, y0 + 0.12 * band, attr, fontsize=min(9, 9 * 24 / len(attr)),
                ha="center", va="top", fontweight="bold")
        for j, cls in enumerate((1, 0)):
            ax.text(x0 + j * (size + gap) + size / 2, y0 + band - 2,
                    f"{'+' if cls else '−'} n={int(counts[cls, i])}", fontsize=8,
                    ha="center", va="bottom")
    ax.set_title(title, fontsize=11, pad=8)
    return _png(fig)
