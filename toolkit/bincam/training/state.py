"""Resumable training state: ``OUT/last/train_state.safetensors`` + ``train_state.json``.

Tensors (model weights, optimizer moments) go to safetensors, everything else (epoch, history,
optimizer hyper-parameters, config) to JSON; no pickle anywhere. The JSON is written last and names
the epoch the tensors carry, so a half-written state is detected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bincam.data.listfiles import atomic_write_text
from bincam.files import atomic_path
from bincam.errors import BincamError

STATE_DIR = "last"
TENSORS = "train_state.safetensors"
META = "train_state.json"


def state_exists(out: Path) -> bool:
    return (out / STATE_DIR / META).is_file()


def save_train_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, config: dict, epoch: int, history: list,
                     best_loss: float) -> None:
    folder = out / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    with atomic_path(folder / TENSORS) as tmp:
        save_file(tensors, str(tmp), metadata={"epoch": str(epoch)})
    meta = {"epoch": epoch, "config": config, "history": history, "best_loss": best_loss,
            "param_groups": opt["param_groups"], "optimizer_scalars": scalars,
            "scaler": scaler.state_dict(), "rng": torch.get_rng_state().tolist()}
    atomic_write_text(folder / META, json.dumps(meta))


def load_train_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler) -> dict[str, Any]:
    """Restore model, optimizer and scaler in place; return the JSON part (epoch, history, …)."""
    folder = out / STATE_DIR
    meta = json.loads((folder / META).read_text())
    try:
        tensors = load_file(str(folder / TENSORS))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        raise BincamError(f"cannot read {folder / TENSORS} ({exc}); delete {folder} to restart") \
            from None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta["optimizer_scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(torch.tensor(meta["rng"], dtype=torch.uint8))
    return meta
