"""``bincam export --preprocess``: a model's preprocessing read from where the model came from.

- ``timm:NAME``: timm's ``pretrained_cfg`` for NAME (``resolve_data_config``: mean, std,
  input_size, crop_pct), no weights downloaded;
- ``torchvision:WEIGHTS`` (e.g. ``ResNet18_Weights.IMAGENET1K_V1``) or, from Python, the weights
  enum itself: its ``transforms()`` (mean, std, crop and resize sizes);
- a Hugging Face ``preprocessor_config.json``: ``image_mean``, ``image_std``, ``size``,
  ``crop_size``/``do_center_crop``, ``do_rescale``/``rescale_factor``, ``do_normalize``.

Each gives a ``Source``: the ``core.preprocess.Preprocessing`` (RGB, NCHW, these sources' own
convention), the input side and the fit rule (``crop`` where they centre-crop, else ``stretch``),
and notes on what bincam does differently (a resampling filter, timm's ``crop_pct``), printed by
the CLI so nothing differs silently. Explicit options override what a source says.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from bincam.core.preprocess import Preprocessing
from bincam.errors import BincamError


@dataclass
class Source:
    preprocessing: Preprocessing
    size: int | None
    fit: str
    notes: list[str] = field(default_factory=list)
    size_given: bool = False        # --size itself (else the source's: for a dynamic input only)

    def input_options(self) -> dict:
        """Keyword arguments of ``export_onnx_classifier`` for this declaration."""
        return {"preprocessing": self.preprocessing, "fit": self.fit,
                "size": self.size if self.size_given else None,
                "size_hint": None if self.size_given else self.size}


def read_source(text: str) -> Source:
    """``--preprocess FILE|timm:NAME|torchvision:WEIGHTS``."""
    if text.startswith("timm:"):
        return from_timm(text[len("timm:"):])
    if text.startswith("torchvision:"):
        return from_torchvision(text[len("torchvision:"):])
    return from_hf_config(text)


def _floats(values, what: str, source: str) -> tuple[float, ...]:
    if isinstance(values, (int, float)):
        values = [values] * 3
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise BincamError(f"{source}: {what} is not a list of numbers ({values!r})") from None
    return out


def _notes(interpolation: str | None, crop_fraction: float | None) -> list[str]:
    notes = []
    if interpolation and interpolation.lower() not in ("bilinear", "interpolationmode.bilinear"):
        notes.append(f"the source resizes with {interpolation.lower()} interpolation; bincam "
                     "resizes bilinearly (small pixel differences)")
    if crop_fraction is not None and not math.isclose(crop_fraction, 1.0):
        notes.append(f"the source crops the central {crop_fraction:.3g} of the shorter side; "
                     "bincam's crop fit takes the whole centred square")
    return notes


def from_timm(name: str) -> Source:
    """timm's pretrained configuration of ``name`` (``model.tag`` or architecture name)."""
    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError:
        raise BincamError("--preprocess timm:NAME needs timm: pip install timm") from None
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except Exception:  # noqa: BLE001 - timm raises several types for an unknown name
        cfg = None
    if cfg is None:
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:5]
        raise BincamError(f"--preprocess timm:{name}: timm knows no model {name!r}"
                          + (f" (similar: {', '.join(close)})" if close else ""))
    data = resolve_data_config(pretrained_cfg=cfg.to_dict())
    _, height, width = data["input_size"]
    prep = Preprocessing(mean=_floats(data["mean"], "mean", name),
                         std=_floats(data["std"], "std", name))
    return Source(prep, height if height == width else None, "crop",
                  _notes(data.get("interpolation"), data.get("crop_pct")))


def from_torchvision(weights) -> Source:
    """A torchvision weights enum (or its name, ``ResNet18_Weights.IMAGENET1K_V1``): what its
    ``transforms()`` does (resize the shorter side, centre crop, mean/std)."""
    if isinstance(weights, str):
        try:
            import torchvision.models as models
        except ImportError:
            raise BincamError("--preprocess torchvision:WEIGHTS needs torchvision") from None
        enum, _, member = weights.partition(".")
        found = getattr(getattr(models, enum, None), member or "DEFAULT", None)
        if found is None:
            raise BincamError(f"--preprocess torchvision:{weights}: no such weights in "
                              "torchvision.models (e.g. ResNet18_Weights.IMAGENET1K_V1)")
        weights = found
    t = weights.transforms()
    crop = list(getattr(t, "crop_size", [None]))[0]
    resize = list(getattr(t, "resize_size", [None]))[0]
    prep = Preprocessing(mean=_floats(t.mean, "mean", str(weights)),
                         std=_floats(t.std, "std", str(weights)))
    return Source(prep, crop, "crop", _notes(str(getattr(t, "interpolation", "")),
                                             crop / resize if crop and resize else None))


def from_hf_config(path: str | Path) -> Source:
    """A Hugging Face image processor's ``preprocessor_config.json``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise BincamError(f"--preprocess {path}: cannot read it ({exc.strerror or exc}); give a "
                          "preprocessor_config.json, timm:NAME or torchvision:WEIGHTS") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BincamError(f"--preprocess {path} is not JSON (a Hugging Face "
                          "preprocessor_config.json)") from None
    if not isinstance(data, dict) or not ({"image_mean", "size", "do_normalize"} & set(data)):
        raise BincamError(f"--preprocess {path} is not a Hugging Face preprocessor_config.json "
                          "(no image_mean, size or do_normalize)")
    source = str(path)
    scale = float(data.get("rescale_factor", 1 / 255)) if data.get("do_rescale", True) else 1.0
    if not math.isfinite(scale) or scale <= 0:
        raise BincamError(f"{source}: rescale_factor {scale!r} must be a positive number")
    prep = Preprocessing(pixel_range=(0.0, 255.0 * scale))
    if data.get("do_normalize", True):
        prep = Preprocessing(pixel_range=prep.pixel_range,
                             mean=_floats(data.get("image_mean", [0.0] * 3), "image_mean", source),
                             std=_floats(data.get("image_std", [1.0] * 3), "image_std", source))
    cropped = bool(data.get("do_center_crop")) and data.get("crop_size") is not None
    size = _hf_side(data.get("crop_size") if cropped else data.get("size"), source)
    return Source(prep, size, "crop" if cropped or _shortest_edge(data.get("size")) else "stretch",
                  _notes({2: "bilinear", 3: "bicubic", 0: "nearest"}.get(data.get("resample"),
                                                                         None), None))


def _shortest_edge(size) -> bool:
    return isinstance(size, dict) and "shortest_edge" in size


def _hf_side(size, source: str) -> int | None:
    if size is None:
        return None
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            if size["height"] != size["width"]:
                raise BincamError(f"{source}: size {size['height']}×{size['width']} is not "
                                  "square; bincam's frame is square")
            return int(size["height"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"])
    raise BincamError(f"{source}: size {size!r} is not a side, {{height, width}} or "
                      "{shortest_edge}")


def parse_size(text: str) -> int:
    """``--size N`` or ``NxN`` (``HxW`` with H = W: bincam's frame is square)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        raise BincamError(f"--size takes a side N or HxW, got {text!r}") from None
    if len(sides) > 2 or (len(sides) == 2 and sides[0] != sides[1]):
        raise BincamError(f"--size {text}: bincam's frame is square; give N or NxN")
    from bincam.core.card_schema import MAX_IMAGE_SIZE

    if not 8 <= sides[0] <= MAX_IMAGE_SIZE:
        raise BincamError(f"--size must be between 8 and {MAX_IMAGE_SIZE} pixels, got {sides[0]}")
    return sides[0]


def declared_input(preprocess: str | None = None, pixel_range: str | None = None,
                   mean: str | None = None, std: str | None = None,
                   channel_order: str | None = None, layout: str | None = None,
                   size: str | None = None, fit: str | None = None,
                   raw_pixels: bool = False) -> Source:
    """The export options' input declaration: ``--preprocess`` first, then each explicit option
    over it; checked (one ``BincamError``) before anything is read or written."""
    from dataclasses import replace

    from bincam.core.preprocess import parse_pixel_range, parse_values
    from bincam.data.fit import check_fit

    base = read_source(preprocess) if preprocess else Source(Preprocessing(), None, "celeba")
    prep = base.preprocessing
    given = {"pixel_range": parse_pixel_range(pixel_range) if pixel_range else None,
             "mean": parse_values(mean, "--mean") if mean else None,
             "std": parse_values(std, "--std") if std else None,
             "channel_order": channel_order.lower() if channel_order else None,
             "layout": layout.lower() if layout else None}
    prep = replace(prep, raw_pixels=raw_pixels, **{k: v for k, v in given.items()
                                                   if v is not None}).check()
    return Source(prep, parse_size(size) if size else base.size,
                  check_fit(fit, "--fit") if fit else base.fit, base.notes, size is not None)
