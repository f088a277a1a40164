"""The training configuration, as the CLI takes it and as the checkpoint card records it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bincam.core.card_schema import MAX_IMAGE_SIZE
from bincam.errors import BincamError
from bincam.files import check_output
from bincam.nets import ARCHITECTURES
from bincam.training.weights import WEIGHTINGS

# fields that may differ between a run and its resumption
RESUMABLE_CHANGES = ("epochs", "resume", "threads", "decode_workers")


@dataclass
class TrainConfig:
    data: str                      # "synth:DIR", "celeba:DIR" or "csv:FILE"
    out: str
    arch: str = "small"
    width: int = 16                # small net only
    weighting: str = "none"
    epochs: int = 8
    batch_size: int = 64           # global batch, split across processes
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    image_size: int = 112
    seed: int = 0
    flip: bool = True
    attributes: list[str] | None = None
    max_train_images: int | None = None
    max_val_images: int | None = None
    resume: bool = False
    threads: int | None = None
    decode_workers: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> "TrainConfig":
        from bincam.data.spec import check_data_spec

        check_data_spec(self.data)
        if self.arch not in ARCHITECTURES:
            raise BincamError(f"unknown --arch {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.weighting not in WEIGHTINGS:
            raise BincamError(f"unknown --weighting {self.weighting!r}; choose one of "
                              f"{', '.join(WEIGHTINGS)}")
        for name in ("epochs", "batch_size", "image_size", "width"):
            if getattr(self, name) < 1:
                raise BincamError(f"--{name.replace('_', '-')} must be positive, "
                                  f"got {getattr(self, name)}")
        if not 32 <= self.image_size <= MAX_IMAGE_SIZE:
            raise BincamError(f"--image-size must be between 32 and {MAX_IMAGE_SIZE}, "
                              f"got {self.image_size}")
        if self.width > 1024:
            raise BincamError(f"--width must be at most 1024, got {self.width}")
        for name in ("max_train_images", "max_val_images", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BincamError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if not 0 < self.lr < math.inf:
            raise BincamError(f"--lr must be a positive number, got {self.lr}")
        if not 0 <= self.weight_decay < math.inf:
            raise BincamError(f"--weight-decay must be a number ≥ 0, got {self.weight_decay}")
        check_output(self.out, "--out", folder=True)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: dict[str, Any]) -> list[str]:
        """Fields (except those a resumption may change) whose values differ from ``other``."""
        mine = self.to_dict()
        return [k for k in mine if k not in RESUMABLE_CHANGES and mine[k] != other.get(k)]
