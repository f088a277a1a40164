"""The models an audit runs: a checkpoint or an exported ONNX file behind one small interface.

Every engine hands the analysis the same NumPy outputs as ``OrtEngine.run``: ``logits [B, K]``,
``activations [B, C, h, w]`` and either ``gradients [B, K, C, h, w]`` (dense) or
``channel_weights [K, C]`` (an affine head: ``∂z_k/∂A = W[k, c]·1[A > 0]``). torch is imported only
for the torch engine, and for exporting a checkpoint when ``--engine ort|trt`` is given one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bincam.errors import BincamError

ENGINES = ("torch", "ort", "trt")


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
    """What the audit needs from a model, whatever the engine."""

    name: str
    attributes: list[str]
    image_size: int
    factored: bool               # affine head: outputs carry channel_weights
    mask_positive: bool          # factored gradient is W·1[A > 0] (pre-ReLU tap)
    layer: str
    engine: object = field(repr=False, default=None)

    def feature_size(self) -> tuple[int, int]:
        """``(h, w)`` of the CAM layer, from one run on a mid-grey image."""
        x = np.full((1, 3, self.image_size, self.image_size), 128, np.uint8)
        return tuple(self.run(x)["activations"].shape[-2:])

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for images ``[B, 3, S, S]``: uint8, or float32 in [0, 1]."""
        return self.engine.run(x)

    def run_forward(self, x: np.ndarray) -> np.ndarray:
        """Logits only: the inference an audit is compared with."""
        forward = getattr(self.engine, "run_forward", None)
        return forward(x) if forward else self.engine.run(x)["logits"]


class TorchRunner:
    """The eager torch engine: one forward, closed-form or autograd gradients of every logit."""

    def __init__(self, model, layer: str, device: str):
        import torch

        self.torch, self.model, self.layer = torch, model.to(device).eval(), layer
        self.device = device
        self.indices = list(range(len(model.card.attributes)))

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        from bincam.cam.gradients import layer_gradients
        from bincam.cam.methods import FactoredGrad

        lg = layer_gradients(self.model, self._input(x), self.layer, self.indices, None)
        out = {"logits": lg.logits.float().cpu().numpy(),
               "activations": lg.activations.detach().float().cpu().numpy()}
        if isinstance(lg.grads, FactoredGrad):
            out["channel_weights"] = lg.grads.weight.cpu().numpy()
        else:
            out["gradients"] = lg.grads.float().cpu().numpy()
        return out

    def _input(self, x: np.ndarray):
        t = self.torch.from_numpy(x).to(self.device)
        return t.float().div_(255.0) if t.dtype == self.torch.uint8 else t

    def run_forward(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self._input(x)).float().cpu().numpy()


def _export(source: ModelSource, cache: Path) -> Path:
    """The checkpoint's gradient graph, exported once into ``cache`` (keyed by its digest)."""
    path = cache / f"{source.name}-{source.digest[:16]}.onnx"
    if not path.is_file():
        from bincam.checkpoint import load_checkpoint
        from bincam.export.model import export_checkpoint, save_onnx

        save_onnx(export_checkpoint(load_checkpoint(source.path)), path)
    return path


def open_model(source: ModelSource, engine: str, device: str = "cpu",
               threads: int | None = None, export_cache: Path | None = None) -> AnalysisModel:
    """Open ``source`` on ``engine``; a checkpoint given to ort/trt is exported first."""
    if engine not in ENGINES:
        raise BincamError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "torch":
        if source.kind != "checkpoint":
            raise BincamError(f"model {source.name}: the torch engine needs a checkpoint folder; "
                              "use --engine ort for an ONNX file")
        from bincam.checkpoint import load_checkpoint

        model = load_checkpoint(source.path, device)
        if threads:
            import torch

            torch.set_num_threads(threads)
        card, layer = model.card, model.default_cam_layer
        head = getattr(model, "affine_heads", {}).get(layer)
        factored, mask_positive = head is not None, bool(head is not None and head.relu)
        return AnalysisModel(source.name, list(card.attributes), card.image_size, factored,
                             mask_positive, layer, TorchRunner(model, layer, device))
    path = source.path
    if source.kind == "checkpoint":
        path = _export(source, export_cache or source.path)
    if engine == "ort":
        from bincam.runtime.ort_engine import OrtEngine

        runner = OrtEngine(path, device=device, threads=threads)
    else:
        from bincam.runtime.trt_engine import TrtEngine

        runner = TrtEngine(path)
    info = runner.info
    if info.image_size is None:
        raise BincamError(f"model {source.name}: {path} has no fixed input size; export it again")
    return AnalysisModel(source.name, list(info.attributes), int(info.image_size),
                         info.gradient_layout == "factored", info.mask_positive,
                         info.target_layer, runner)


@dataclass
class ModelFacts:
    """What the report needs from a model file, read without opening an engine."""

    attributes: list[str]
    image_size: int | None
    positive_counts: list[int] | None
    negative_counts: list[int] | None
    weighting: str | None


def describe(source: ModelSource) -> ModelFacts:
    """Attributes, input size, training class counts and weighting from the card or metadata."""
    if source.kind == "checkpoint":
        from bincam.checkpoint import read_card

        card = read_card(source.path)
        config = (card.training or {}).get("config") or {}
        return ModelFacts(list(card.attributes), card.image_size, card.positive_counts,
                          card.negative_counts, config.get("weighting"))
    import onnx

    from bincam.export.metadata import read_metadata

    try:
        proto = onnx.load(str(source.path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
        raise BincamError(f"model {source.name}: {source.path} is not a loadable ONNX model "
                          f"({str(exc).splitlines()[0][:120]})") from None
    info = read_metadata({p.key: p.value for p in proto.metadata_props}, str(source.path))
    return ModelFacts(list(info.attributes), info.image_size, info.positive_counts,
                      info.negative_counts, None)


def majority_from(facts: ModelFacts, ds_root, attributes: list[str]
                  ) -> tuple[np.ndarray, np.ndarray, str]:
    """``(positive share [K], majority is positive [K], where from)``: the model's training
    counts, else the dataset's training split, else CelebA's published training shares."""
    if facts.positive_counts is not None and facts.negative_counts is not None:
        pos = np.asarray(facts.positive_counts, float)
        share = pos / (pos + np.asarray(facts.negative_counts, float))
        return share, share > 0.5, "the model's training class counts"
    from bincam.data.celeba import CelebA

    try:
        train = CelebA(ds_root, split="train", attributes=attributes)
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
