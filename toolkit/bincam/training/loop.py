"""The training loop: weighted per-attribute BCE, AdamW with warm-up + cosine, per-epoch validation,
best-checkpoint saving, resume, and DistributedDataParallel under ``torchrun``.

Loss for a batch of ``B`` images and ``K`` attributes with labels ``y`` and logits ``z``:
``L = 1/(B·K) Σ w(y)·BCE(z, y)`` with ``w(1) = w⁺_a`` and ``w(0) = w⁻_a`` (see ``weights.py``).
The epoch's order and flips come from ``(seed, epoch)`` alone, so a run is deterministic on a CPU
and a resumed run continues exactly where the stopped one was.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bincam.checkpoint import card_for, save_checkpoint
from bincam.data.dataset import describe as describe_dataset, fit_of
from bincam.data.listfiles import atomic_write_text
from bincam.errors import BincamError
from bincam.core.metrics import error_rates
from bincam.nets import build_net
from bincam.training.config import TrainConfig
from bincam.training.data import load_images, open_split, to_input
from bincam.training.state import load_train_state, save_train_state, state_exists
from bincam.training.weights import class_weights
from bincam.training import distributed as dist


class TrainReporter:
    """Hooks the loop calls; the CLI fills them with Rich progress bars. Defaults do nothing."""

    def stage(self, text: str) -> None: ...
    def decode_progress(self, done: int, total: int) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, images: int, loss: float) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return 0.5 * peak * (1 + math.cos(math.pi * min(t, 1.0)))


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, w_pos: torch.Tensor,
                 w_neg: torch.Tensor) -> torch.Tensor:
    """Mean over images and attributes of the class-weighted BCE with logits."""
    weight = targets * w_pos + (1 - targets) * w_neg
    return F.binary_cross_entropy_with_logits(logits, targets, weight=weight)


def train(config: TrainConfig, reporter: TrainReporter | None = None) -> Path:
    """Train a net as ``config`` says; returns the checkpoint folder (the best epoch)."""
    config.check()
    rep = reporter or TrainReporter()
    world = dist.init_from_env()
    out = Path(config.out)
    if config.resume and not state_exists(out):
        raise BincamError(f"nothing to resume in {out}: no saved training state")
    if not config.resume and (state_exists(out) or (out / "card.json").exists()):
        raise BincamError(f"{out} already holds a training run; pass --resume to continue it or "
                          "choose another --out")
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(f"cuda:{world.local_rank}" if torch.cuda.is_available() else "cpu")

    rep.stage("reading labels")
    train_ds = open_split(config.data, "train", config.image_size, config.attributes,
                          config.max_train_images)
    val_ds = open_split(config.data, "valid", config.image_size, config.attributes,
                        config.max_val_images)
    attributes = train_ds.attributes
    pos = train_ds.positive_counts()
    neg = len(train_ds) - pos
    w_pos_np, w_neg_np = class_weights(pos, neg, config.weighting)
    majority_positive = pos > neg

    rep.stage(f"decoding {len(train_ds) + len(val_ds)} images at {config.image_size}px")
    total = len(train_ds) + len(val_ds)
    images = load_images(train_ds, config.decode_workers,
                         lambda d: rep.decode_progress(d, total))
    val_images = load_images(val_ds, config.decode_workers,
                             lambda d: rep.decode_progress(len(train_ds) + d, total))
    labels = torch.from_numpy(train_ds.labels).float()
    val_labels = torch.from_numpy(val_ds.labels).float()
    w_pos = torch.tensor(w_pos_np, dtype=torch.float32, device=device)
    w_neg = torch.tensor(w_neg_np, dtype=torch.float32, device=device)

    torch.manual_seed(config.seed)
    extra = {"width": config.width} if config.arch == "small" else {}
    model = build_net(config.arch, num_outputs=len(attributes), **extra).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    start_epoch, history, best_loss = 0, [], math.inf
    if config.resume:
        saved = load_train_state(out, model, optimizer, scaler)
        if diffs := config.differences(saved["config"]):
            raise BincamError(f"--resume with settings that differ from the saved run: "
                              f"{', '.join(diffs)}; rerun with the original settings")
        start_epoch, history, best_loss = saved["epoch"] + 1, saved["history"], saved["best_loss"]
    net = world.wrap(model)

    local_batch = max(1, config.batch_size // world.size)
    per_rank = len(train_ds) // world.size
    steps = math.ceil(per_rank / local_batch)
    total_steps = steps * config.epochs
    warmup = min(max(1, int(config.warmup_epochs * steps)), total_steps)
    training_info = {"config": config.to_dict(), "class_weights": {
        "positive": w_pos_np.tolist(), "negative": w_neg_np.tolist()},
        "world_size": world.size, "device": device.type, "train_images": len(train_ds),
        "val_images": len(val_ds), "dataset": describe_dataset(train_ds)}

    for epoch in range(start_epoch, config.epochs):
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(train_ds), generator=g)
        flips = torch.rand(len(train_ds), generator=g) < 0.5
        mine = order[world.rank::world.size][:per_rank]
        net.train()
        rep.epoch_start(epoch, config.epochs, steps)
        loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
        for s in range(steps):
            idx = mine[s * local_batch:(s + 1) * local_batch]
            x = to_input(images[idx])
            if config.flip:
                x = torch.where(flips[idx].view(-1, 1, 1, 1), x.flip(-1), x)
            x, y = x.to(device, non_blocking=True), labels[idx].to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch * steps + s, total_steps, warmup, config.lr)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                loss = weighted_bce(net(x).float(), y, w_pos, w_neg)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
            rep.step(len(idx) * world.size, loss.item())
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1),
                  "images_per_s": seen * world.size / seconds, "seconds": seconds,
                  "lr_end": optimizer.param_groups[0]["lr"]}
        if world.rank == 0:
            val = evaluate(model, val_images, val_labels, w_pos, w_neg, majority_positive, device,
                           attributes)
            record.update(val_loss=val["loss"], **{f"val_{k}": v for k, v in val["means"].items()})
            history.append(record)
            if val["loss"] < best_loss:
                best_loss = val["loss"]
                card = card_for(model, attributes, config.image_size, input_fit=fit_of(train_ds),
                                positive_counts=pos.tolist(), negative_counts=neg.tolist(),
                                training={**training_info, "epoch": epoch, "history": history},
                                validation={"epoch": epoch, "loss": val["loss"],
                                            "means": val["means"],
                                            "per_attribute": val["per_attribute"]})
                save_checkpoint(model, card, out)
            save_train_state(out, model, optimizer, scaler, config.to_dict(), epoch, history,
                             best_loss)
            atomic_write_text(out / "history.json", json.dumps(history, indent=2))
            rep.epoch_end(record)
        world.barrier()
    world.close()
    return out


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, w_pos: torch.Tensor,
             w_neg: torch.Tensor, majority_positive: np.ndarray, device: torch.device,
             names: list[str], batch: int = 256) -> dict[str, Any]:
    """Weighted loss and per-attribute error rates of ``model`` on a decoded split."""
    logits = predict_logits(model, images, device, batch)
    loss = weighted_bce(logits, labels, w_pos.cpu(), w_neg.cpu()).item()
    rates = error_rates(logits.numpy(), labels.numpy(), majority_positive)
    return {"loss": loss, "means": rates.means(), "per_attribute": rates.per_attribute(names)}


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu",
                   batch: int = 256) -> torch.Tensor:
    """Logits ``[N, K]`` (float32, CPU) of ``model`` in eval mode for decoded uint8 images."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(to_input(images[i:i + batch]).to(device)).float().cpu()
                        for i in range(0, len(images), batch)])
    model.train(was_training)
    return logits
