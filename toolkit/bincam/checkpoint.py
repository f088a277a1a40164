"""Checkpoints: safetensors weights plus a JSON model card. Loading never unpickles.

A checkpoint is a folder ``DIR/`` with ``model.safetensors`` and ``card.json``. The card says how to
rebuild the net (architecture and its arguments), what it predicts (attribute names, training class
counts), what it expects (input size, pixel range, normalisation), where CAMs can be taken
(target layers) and how it was trained (config, validation metrics).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bincam import __version__
from bincam.errors import BincamError
from bincam.nets import build_from_config

WEIGHTS = "model.safetensors"
CARD = "card.json"
CARD_FORMAT = "bincam-model-card/1"


@dataclass
class ModelCard:
    """Everything needed to rebuild, feed and interpret a trained net."""

    arch: dict[str, Any]
    attributes: list[str]
    image_size: int
    pixel_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    cam_layers: list[str] = field(default_factory=list)
    default_cam_layer: str = ""
    positive_counts: list[int] | None = None
    negative_counts: list[int] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    bincam_version: str = __version__
    format: str = CARD_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "card") -> "ModelCard":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BincamError(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            raise BincamError(f"{source} is not a bincam model card (format {CARD_FORMAT})")
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise BincamError(f"{source} lacks a field: {exc}") from None

    def majority_is_positive(self) -> list[bool]:
        """Per attribute: is the positive class the majority of the training labels?"""
        if self.positive_counts is None or self.negative_counts is None:
            raise BincamError("this model card has no training class counts")
        return [p > n for p, n in zip(self.positive_counts, self.negative_counts)]


def card_for(model: nn.Module, attributes: list[str], image_size: int, **fields: Any) -> ModelCard:
    """A card describing ``model`` (architecture and CAM layers are read from the net)."""
    return ModelCard(arch=dict(model.arch_config), attributes=list(attributes),
                     image_size=int(image_size), cam_layers=list(model.cam_layers),
                     default_cam_layer=model.default_cam_layer, **fields)


def save_checkpoint(model: nn.Module, card: ModelCard, folder: Path | str) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/card.json`` (temp names, then rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp_w = folder / f".{WEIGHTS}.tmp{os.getpid()}"
    tmp_c = folder / f".{CARD}.tmp{os.getpid()}"
    save_file(state, str(tmp_w), metadata={"format": "pt", "bincam_card": CARD_FORMAT})
    tmp_c.write_text(card.to_json())
    os.replace(tmp_w, folder / WEIGHTS)
    os.replace(tmp_c, folder / CARD)
    return folder


def read_card(path: Path | str) -> ModelCard:
    """The card of a checkpoint folder (or of the folder holding a given ``model.safetensors``)."""
    folder = _folder(path)
    card_path = folder / CARD
    if not card_path.is_file():
        raise BincamError(f"no {CARD} in {folder}: a bincam checkpoint is a folder with {WEIGHTS} "
                          f"and {CARD} (make one with `bincam train` or `bincam convert-affact`)")
    return ModelCard.from_json(card_path.read_text(), str(card_path))


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint as an eval-mode net; its card is ``model.card``. Never unpickles."""
    folder = _folder(path)
    card = read_card(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise BincamError(f"no {WEIGHTS} in {folder}")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BincamError(f"{weights} is not a readable safetensors file ({exc})") from None
    model = build_from_config(card.arch)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misfit = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or misfit:
        raise BincamError(f"{weights} does not fit a {card.arch.get('arch')} net as its card "
                          f"describes: {len(missing)} missing, {len(unexpected)} unexpected and "
                          f"{len(misfit)} mis-shaped tensors (e.g. {(missing + unexpected + misfit)[0]})")
    model.load_state_dict(state)
    model.card = card
    return model.to(device).eval()


def _folder(path: Path | str) -> Path:
    path = Path(path)
    if path.is_file():
        return path.parent
    if not path.exists():
        raise BincamError(f"checkpoint {path} does not exist")
    return path
