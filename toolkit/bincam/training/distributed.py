"""Multi-process training under ``torchrun``: gloo on CPU, nccl on GPU. One process is a no-op.

``torchrun --nproc-per-node N -m bincam train …`` sets RANK, WORLD_SIZE and LOCAL_RANK; each process
trains on its shard of every epoch's permutation with DistributedDataParallel (gradients averaged),
and rank 0 validates and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.size == 1:
            return model
        ids = [self.local_rank] if torch.cuda.is_available() else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.size > 1:
            tdist.barrier()

    def close(self) -> None:
        if self.size > 1 and tdist.is_initialized():
            tdist.destroy_process_group()


def init_from_env() -> World:
    """Join the process group that torchrun describes in the environment (if any)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    if not tdist.is_initialized():
        tdist.init_process_group(backend)
    return World(rank, size, local)
