"""The models an audit runs: a checkpoint or an exported ONNX file, opened through the engine
contract (``bincam.runtime.open_engine``), plus the facts the report needs from each.

Every engine hands the analysis the same NumPy outputs (``Engine.run``): ``logits [B, K]``,
``activations [B, C, h, w]`` and either ``gradients [B, K, C, h, w]`` (dense) or
``channel_weights [K, C]`` (an affine head: ``∂z_k/∂A = W[k, c]·1[A > 0]``). torch is imported only
for the torch engine, and for exporting a checkpoint when ``--engine ort|trt`` is given one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bincam.core.model_info import ModelInfo, read_model_info, require_gradients
from bincam.errors import BincamError
from bincam.runtime.engine import Engine


def file_digest(paths: list[Path]) -> str:
    """sha256 over the bytes of ``paths`` (in order): what identifies a model in a run."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@dataclass
class ModelSource:
    """``NAME=PATH`` from the command line, with what identifies the file's contents."""

    name: str
    path: Path
    kind: str                    # "checkpoint" | "onnx"
    digest: str = ""

    @classmethod
    def parse(cls, spec: str) -> "ModelSource":
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise BincamError(f"--model must look like NAME=CHECKPOINT_OR_ONNX, got {spec!r}")
        if not name.replace("-", "").replace("_", "").isalnum():
            raise BincamError(f"model name {name!r} may hold only letters, digits, - and _")
        p = Path(path)
        if p.is_file() and p.suffix == ".onnx":
            return cls(name, p, "onnx", file_digest([p]))
        if p.is_dir() and (p / "card.json").is_file() and (p / "model.safetensors").is_file():
            return cls(name, p, "checkpoint", file_digest([p / "card.json",
                                                          p / "model.safetensors"]))
        raise BincamError(f"model {name}: {path} is neither a checkpoint folder (card.json + "
                          "model.safetensors) nor an .onnx file")


@dataclass
class AnalysisModel:
    """What the audit needs from a model, whatever the engine: its name, description and engine."""

    name: str
    engine: Engine = field(repr=False)

    @property
    def info(self) -> ModelInfo:
        return self.engine.info

    @property
    def attributes(self) -> list[str]:
        return list(self.info.attributes)

    @property
    def image_size(self) -> int:
        return int(self.info.image_size)

    @property
    def factored(self) -> bool:
        """Affine head: the outputs carry ``channel_weights``."""
        return self.info.gradient_layout == "factored"

    @property
    def mask_positive(self) -> bool:
        return self.info.mask_positive

    @property
    def layer(self) -> str:
        return self.info.target_layer

    def feature_size(self) -> tuple[int, int]:
        """``(h, w)`` of the CAM layer, from one run on a mid-grey image."""
        x = np.full((1, 3, self.image_size, self.image_size), 128, np.uint8)
        return tuple(self.run(x)["activations"].shape[-2:])

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for images ``[B, 3, S, S]``: uint8, or float32 in [0, 1]."""
        return self.engine.run(x)

    def run_forward(self, x: np.ndarray) -> np.ndarray:
        """Logits only: the inference an audit is compared with."""
        return self.engine.run_forward(x)

    def close(self) -> None:
        self.engine.close()


def open_model(source: ModelSource, engine: str, device: str = "cpu",
               threads: int | None = None, export_cache: Path | None = None) -> AnalysisModel:
    """Open ``source`` on ``engine``; a checkpoint given to ort/trt is exported first (once, into
    ``export_cache``)."""
    from bincam.runtime import open_engine

    try:
        opened = open_engine(source.path, engine, device, export_cache=export_cache,
                             **({"threads": threads} if threads else {}))
    except BincamError as exc:
        raise BincamError(f"model {source.name}: {exc}") from None
    if opened.info.explain:
        opened.close()
        require_gradients(opened.info, f"model {source.name}: {source.path}", "bincam analyze")
    if opened.info.image_size is None:
        opened.close()
        raise BincamError(f"model {source.name}: {source.path} has no fixed input size; export "
                          "it again")
    return AnalysisModel(source.name, opened)


def describe(source: ModelSource) -> ModelInfo:
    """Attributes, input size, training class counts and weighting from the card or metadata,
    read without opening an engine."""
    try:
        return read_model_info(source.path)
    except BincamError as exc:
        raise BincamError(f"model {source.name}: {exc}") from None


def majority_from(facts: ModelInfo, ds_root, attributes: list[str]
                  ) -> tuple[np.ndarray, np.ndarray, str]:
    """``(positive share [K], majority is positive [K], where from)``: the model's training
    counts, else the dataset's training split, else CelebA's published training shares."""
    if facts.positive_counts is not None and facts.negative_counts is not None:
        pos = np.asarray(facts.positive_counts, float)
        share = pos / (pos + np.asarray(facts.negative_counts, float))
        return share, share > 0.5, "the model's training class counts"
    from bincam.data.celeba import CelebA
    from bincam.data.csvset import CsvDataset

    try:
        csv = str(ds_root).endswith(".csv")
        train = (CsvDataset if csv else CelebA)(ds_root, split="train", attributes=attributes)
        if len(train):
            share = train.labels.mean(0)
            return share, share > 0.5, "the dataset's training split"
    except BincamError:
        pass
    from bincam.attributes import TRAIN_POSITIVE_SHARE

    if all(a in TRAIN_POSITIVE_SHARE for a in attributes):
        share = np.array([TRAIN_POSITIVE_SHARE[a] for a in attributes])
        return share, share > 0.5, "CelebA's training shares (the model has no class counts)"
    raise BincamError("the model carries no training class counts and the dataset has no "
                      "training split: the majority class of each attribute is unknown")
