"""Checkpoints: safetensors weights plus a JSON model card. Loading never unpickles.

A checkpoint is a folder ``DIR/`` with ``model.safetensors`` and ``card.json``. The card says how to
rebuild the net (architecture and its arguments), what it predicts (attribute names, training class
counts), what it expects (input size, pixel range, normalisation), where CAMs can be taken
(target layers) and how it was trained (config, validation metrics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bincam.core.model_info import CARD, CARD_FORMAT, WEIGHTS, ModelCard, checkpoint_folder, read_card
from bincam.errors import BincamError
from bincam.files import atomic_path
from bincam.nets import build_from_config

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
    with atomic_path(folder / WEIGHTS) as weights, atomic_path(folder / CARD) as card_file:
        save_file(state, str(weights), metadata={"format": "pt", "bincam_card": CARD_FORMAT})
        card_file.write_text(card.to_json())  # both written before either is renamed
    return folder


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint as an eval-mode net; its card is ``model.card``. Never unpickles."""
    folder = checkpoint_folder(path)
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
    for name, tensor in state.items():
        want = expected[name].dtype
        if tensor.dtype != want and not (tensor.is_floating_point() and want.is_floating_point):
            raise BincamError(f"{weights}: tensor {name} is {tensor.dtype}, expected {want}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise BincamError(f"{weights}: tensor {name} holds NaN or Inf; the checkpoint is "
                              "broken (retrain, or restore it)")
    model.load_state_dict(state)
    model.card = card
    return model.to(device).eval()
