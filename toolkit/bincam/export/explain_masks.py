"""Attribute masks for the PE output of an explaining file.

A bincam checkpoint's attributes have CelebA mask regions (``bincam.attributes``). A foreign
classifier's come from ``--masks PATH``: an ``.npz`` with one 2-D array per attribute name, or a
folder with ``NAME.png`` or ``NAME.npy`` per attribute (nonzero / PNG grey level > 127 = inside).
Masks are in the model's input frame and are resized (nearest neighbour) to the map size.
Attributes without a mask get no PE (NaN).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bincam.errors import BincamError


def region_masks(attributes: list[str], size: int) -> dict[str, np.ndarray]:
    """The CelebA mask regions of those attributes that have one, at ``size``."""
    from bincam.attributes import ATTRIBUTE_REGION, mask_array

    return {a: mask_array(a, size) for a in attributes if a in ATTRIBUTE_REGION}


def _resize(mask: np.ndarray, size: int, source: str) -> np.ndarray:
    from PIL import Image

    if mask.ndim != 2 or min(mask.shape) < 1:
        raise BincamError(f"mask {source} must be a 2-D array, got shape {list(mask.shape)}")
    inside = mask != 0
    if mask.shape != (size, size):
        image = Image.fromarray(inside.astype(np.uint8) * 255)
        inside = np.asarray(image.resize((size, size), Image.Resampling.NEAREST)) > 127
    if not inside.any():
        raise BincamError(f"mask {source} is empty at {size}×{size}; PE inside it is undefined")
    return inside


def load_masks(path: Path | str, attributes: list[str], size: int) -> dict[str, np.ndarray]:
    """Masks ``{name: bool [size, size]}`` from an ``.npz`` or a folder (see the module doc);
    a name that is not one of ``attributes`` is an error (a typo would silently drop PE)."""
    path = Path(path)
    found: dict[str, tuple[np.ndarray, str]] = {}
    if path.is_file() and path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                found = {k: (data[k], f"{path}[{k}]") for k in data.files}
        except (OSError, ValueError) as exc:
            raise BincamError(f"{path} is not a readable .npz of masks ({exc})") from None
    elif path.is_dir():
        from PIL import Image, UnidentifiedImageError

        for file in sorted(path.iterdir()):
            try:
                if file.suffix.lower() == ".png":
                    with Image.open(file) as image:
                        found[file.stem] = (np.asarray(image.convert("L")) > 127, str(file))
                elif file.suffix == ".npy":
                    found[file.stem] = (np.load(file, allow_pickle=False), str(file))
            except (OSError, ValueError, UnidentifiedImageError) as exc:
                raise BincamError(f"mask {file} is not readable ({exc})") from None
    else:
        raise BincamError(f"--masks {path}: give an .npz file or a folder of NAME.png / NAME.npy")
    unknown = sorted(set(found) - set(attributes))
    if unknown:
        raise BincamError(f"masks for unknown attribute(s) {', '.join(unknown)} in {path}; "
                          f"the model's attributes are: {', '.join(attributes)}")
    if not found:
        raise BincamError(f"no masks in {path} (expected NAME.png, NAME.npy or .npz keys)")
    return {name: _resize(np.asarray(arr), size, src) for name, (arr, src) in found.items()}
