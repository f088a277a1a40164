"""The training configuration, as the CLI takes it and as the checkpoint card records it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bincam.errors import BincamError
from bincam.nets import ARCHITECTURES
from bincam.training.weights import WEIGHTINGS

# fields that may differ between a run and its resumption
RESUMABLE_CHANGES = ("epochs", "resume", "threads", "decode_workers")


@dataclass
class TrainConfig:
    data: str                      # "synth:DIR" or "celeba:DIR"
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
        from bincam.data.celeba import locate
        from bincam.training.data import parse_data_spec

        locate(parse_data_spec(self.data)[1])
        if self.arch not in ARCHITECTURES:
            raise BincamError(f"unknown --arch {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.weighting not in WEIGHTINGS:
            raise BincamError(f"unknown --weighting {self.weighting!r}; choose one of "
                              f"{', '.join(WEIGHTINGS)}")
        for name in ("epochs", "batch_size", "image_size", "width"):
            if getattr(self, name) < 1:
                raise BincamError(f"--{name.replace('_', '-')} must be positive, "
                                  f"got {getattr(self, name)}")
        if self.image_size < 32:
            raise BincamError(f"--image-size must be at least 32, got {self.image_size}")
        if not self.lr > 0:
            raise BincamError(f"--lr must be positive, got {self.lr}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: dict[str, Any]) -> list[str]:
        """Fields (except those a resumption may change) whose values differ from ``other``."""
        mine = self.to_dict()
        return [k for k in mine if k not in RESUMABLE_CHANGES and mine[k] != other.get(k)]
