"""Run a benchmark: latency of every (engine, batch, scope), paired ratios, peak memory, the
reference approach, and fidelity against the eager fp32 torch engine — one JSON-able record.

Timing runs in ``rounds``: each round measures every batch size of every engine, then a share of
the baseline images, so slow drift of a shared machine (±30 % over minutes here) shows up as a
difference between rounds and is reported as the range of the per-round ratios. Within a round,
engines are measured one after another (switching engines between calls costs the next call
page faults and cold caches, seen as a 1.4× slower first call): after ``warmup`` calls of each
scope, every iteration runs the three scopes once in a seeded random order, so a ratio of two
scopes is taken per iteration (``stats.ratio_stats``); ratios across engines and with the
baselines are ratios of medians per round (``stats.unpaired_ratio_stats``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from bincam.bench.engines import BASELINES, TimedEngine, available_baselines
from bincam.core.fidelity import compare
from bincam.core.checks import check_logits
from bincam.data.batches import bench_images, to_batch
from bincam.bench.memory import PeakMemory
from bincam.bench.stats import latency_stats, ratio_stats, unpaired_ratio_stats
from bincam.errors import BincamError

SCHEMA = "bincam.bench/1"
SCOPES = ("forward", "cam", "end_to_end")
REFERENCE = "torch"  # fidelity is measured against the eager fp32 torch engine
ENGINE_NAMES = ("torch", "ort", "trt")
MIN_ITERS_PER_ROUND = 3  # a round's median needs a few samples of each scope


@dataclass
class BenchConfig:
    model: str                       # checkpoint folder, exported .onnx, or arch:NAME (random weights)
    engines: list[str] = field(default_factory=lambda: ["torch", "ort"])
    batches: list[int] = field(default_factory=lambda: [1, 8])
    method: str = "gradcam"
    attributes: str = "all"
    device: str = "cpu"
    warmup: int = 2
    iters: int = 15                  # timed iterations in all, spread over the rounds
    rounds: int = 5
    images: str = "synth"            # synth, random, or an image folder
    seed: int = 0
    reference_images: int = 1        # images timed per baseline; 0 skips the baselines
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    fidelity_images: int = 8
    threads: int | None = None       # ORT intra-op threads (default: one per core)
    checkpoint: str | None = None    # the torch model of an ONNX MODEL

    def check(self) -> "BenchConfig":
        """Every option's rule, checked before any work (each message states its rule)."""
        from bincam.bench.engines import BASELINES

        if self.rounds < 1:
            raise BincamError(f"--rounds must be at least 1, got {self.rounds}")
        if self.iters < MIN_ITERS_PER_ROUND * self.rounds:
            raise BincamError(f"--iters must be at least {MIN_ITERS_PER_ROUND} per round "
                              f"({MIN_ITERS_PER_ROUND} × --rounds {self.rounds} = "
                              f"{MIN_ITERS_PER_ROUND * self.rounds}), got {self.iters}")
        for option, value in (("--warmup", self.warmup), ("--reference-images",
                                                          self.reference_images),
                              ("--fidelity-images", self.fidelity_images)):
            if value < 0:
                raise BincamError(f"{option} must be at least 0, got {value}")
        if not self.batches or not all(1 <= b <= 4096 for b in self.batches):
            raise BincamError(f"--batch takes batch sizes between 1 and 4096, got {self.batches}")
        if self.threads is not None and self.threads < 1:
            raise BincamError(f"--threads must be at least 1, got {self.threads}")
        if self.device not in ("cpu", "cuda"):
            raise BincamError(f"--device must be cpu or cuda, got {self.device!r}")
        unknown = [e for e in self.engines if e not in ENGINE_NAMES]
        if unknown or not self.engines or len(set(self.engines)) != len(self.engines):
            raise BincamError(f"--engines takes distinct names from {', '.join(ENGINE_NAMES)}, "
                              f"got {', '.join(self.engines) or 'none'}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise BincamError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}")
        if self.images not in ("synth", "random") and not Path(self.images).is_dir():
            raise BincamError(f"--images must be synth, random or an image folder; "
                              f"{self.images!r} is none")
        if not self.model.startswith("arch:") and not Path(self.model).exists():
            raise BincamError(f"model {self.model} does not exist")
        return self


def _load(config: BenchConfig):
    """(torch model or None, ONNX bytes or None, description)."""
    from bincam.checkpoint import load_checkpoint
    from bincam.nets import build_net

    spec = config.model
    if spec.startswith("arch:"):
        import torch

        torch.manual_seed(config.seed)
        return build_net(spec[5:]).eval(), None, f"{spec[5:]} architecture, random weights"
    path = Path(spec)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise BincamError(f"ONNX model {path} does not exist")
        model = load_checkpoint(config.checkpoint) if config.checkpoint else None
        return model, path.read_bytes(), f"{path.name}" + (f" + {config.checkpoint}"
                                                            if config.checkpoint else "")
    if config.checkpoint:
        raise BincamError("--checkpoint is for an ONNX MODEL; MODEL is already a checkpoint")
    return load_checkpoint(path), None, path.name


def _engines(config: BenchConfig, model, onnx_bytes) -> dict[str, TimedEngine]:
    """Every engine of the run, opened through the contract: the torch net where there is one,
    else the ONNX file (ort and trt take the file when given one, else export the net)."""
    from bincam.attributes import resolve_attributes
    from bincam.core.model_info import require_gradients
    from bincam.runtime import ENGINES, open_engine

    names = [n for n in ENGINES if n != "auto"]
    if not config.engines or len(set(config.engines)) != len(config.engines) or \
            not set(config.engines) <= set(names):
        raise BincamError(f"--engines takes distinct names from {', '.join(names)}, got "
                          f"{','.join(config.engines) or 'none'}")
    engines, attributes = {}, None
    try:
        for name in config.engines:
            engine = open_engine(model if model is not None else onnx_bytes, name,
                                 config.device, onnx=onnx_bytes, threads=config.threads)
            if engine.info.explain:
                engine.close()
                require_gradients(engine.info, config.model, "bincam bench")
            attributes = attributes or resolve_attributes(config.attributes,
                                                          engine.info.attributes)
            engines[name] = TimedEngine(engine, config.method, attributes)
    except BaseException as exc:
        for opened in engines.values():
            opened.close()
        if not isinstance(exc, BincamError):
            raise
        hint = " (an ONNX MODEL runs on torch with --checkpoint DIR)" if model is None else ""
        raise BincamError(f"{exc}{hint}") from None
    return engines


def _time_block(engine, images: np.ndarray, iters: int, config: BenchConfig, rng,
                advance: Callable[[str], None]) -> dict[str, list[float]]:
    """Warm-up, then ``iters`` iterations of the three scopes in random order."""
    x = to_batch(images)
    calls = {"forward": lambda: engine.forward(x), "cam": lambda: engine.cam(x),
             "end_to_end": lambda: engine.end_to_end(images)}
    for _ in range(max(config.warmup, 1)):  # one untimed call at least: lazy sessions build
        for fn in calls.values():
            fn()
    samples = {scope: [] for scope in calls}
    for _ in range(iters):
        for scope in rng.permutation(SCOPES):
            t0 = time.perf_counter()
            calls[scope]()
            samples[scope].append(time.perf_counter() - t0)
        advance(f"{engine.name} batch {len(images)}")
    return samples


def _measure(engines: dict, baselines: dict, images: np.ndarray, config: BenchConfig,
             advance: Callable[[str], None]) -> tuple[dict, dict]:
    """Per-round samples: ``{(batch, engine, scope): [[s, …] per round]}`` and
    ``{baseline: [[s per image, …] per round]}`` (baseline image ``i`` in round ``i % rounds``)."""
    rng = np.random.default_rng(config.seed)
    timed = {(b, n, s): [] for b in config.batches for n in engines for s in SCOPES}
    base = {name: [] for name in baselines}
    for r in range(config.rounds):
        iters = config.iters // config.rounds + (r < config.iters % config.rounds)
        for b in config.batches:
            for name, engine in engines.items():
                for scope, v in _time_block(engine, images[:b], iters, config, rng,
                                            advance).items():
                    timed[(b, name, scope)].append(v)
        for name, approach in baselines.items():
            base[name].append([])
            for i in range(r, config.reference_images, config.rounds):
                t0 = time.perf_counter()
                approach.end_to_end(images[i:i + 1])
                base[name][r].append(time.perf_counter() - t0)
                advance(f"{name}: image {i + 1}/{config.reference_images}")
    return timed, base


def _flat(rounds: list[list[float]]) -> list[float]:
    return [v for r in rounds for v in r]


def _timing(engines: dict, timed: dict, images: np.ndarray, config: BenchConfig) -> dict:
    out = {}
    for b in config.batches:
        rows = []
        for name, engine in engines.items():
            s = {scope: timed[(b, name, scope)] for scope in SCOPES}
            with PeakMemory(cuda=engine.engine.supports("torch_cuda_memory")) as peak:
                engine.end_to_end(images[:b])
            rows.append({
                "engine": name, "batch": b,
                "scopes": {scope: {**latency_stats(_flat(v), b), "samples_s": _flat(v),
                                   "round_of_sample": [r for r, xs in enumerate(v) for _ in xs]}
                           for scope, v in s.items()},
                "ratios": {"CAM / forward": ratio_stats(s["cam"], s["forward"]),
                           "e2e / forward": ratio_stats(s["end_to_end"], s["forward"])},
                "memory": {"peak_rss_bytes": peak.rss_bytes, "rss_scoped": peak.scoped,
                           "cuda_max_allocated_bytes": peak.cuda_bytes}})
        names = list(engines)
        cross = {f"{x} / {y} {label}": unpaired_ratio_stats(timed[(b, x, scope)],
                                                            timed[(b, y, scope)])
                 for i, x in enumerate(names) for y in names[i + 1:]
                 for scope, label in (("cam", "CAM"), ("end_to_end", "e2e"))}
        out[str(b)] = {"rows": rows, "cross": cross}
    return out


def _baselines(base: dict, timed: dict, config: BenchConfig, engines: dict) -> dict:
    """Per baseline: seconds per image, and baseline / engine seconds per image per engine,
    batch and scope (the baselines make final maps, so ``e2e`` is like for like)."""
    out = {}
    for name, rounds in base.items():
        out[name] = {"per_image": {**latency_stats(_flat(rounds)), "samples_s": _flat(rounds)},
                     "vs": {f"{name} / {engine} {label} batch {b}":
                            unpaired_ratio_stats(rounds, timed[(b, engine, scope)], scale=b)
                            for b in config.batches for engine in engines
                            for scope, label in (("end_to_end", "e2e"), ("cam", "CAM"))}}
    return out


def _fidelity(engines, model, config, attributes, images, baselines, advance) -> dict:
    from bincam.runtime import open_engine

    truth = engines.get(REFERENCE) or TimedEngine(open_engine(model, REFERENCE, config.device),
                                                  config.method, attributes)
    expected = truth.outputs(images)
    if REFERENCE not in engines:
        truth.close()
    out = {}
    for name, engine in engines.items():
        if engine is not truth:
            out[name] = compare(engine.outputs(images), expected, attributes)
            out[name]["images"] = len(images)
        advance(f"fidelity: {name}")
    n = config.reference_images
    for name, approach in baselines.items():
        mine = {k: (v[:n] if v is not None else None) for k, v in expected.items()}
        out[name] = {**compare(approach.outputs(images[:n]), mine, attributes), "images": n}
        advance(f"fidelity: {name}")
    return out


def total_steps(config: BenchConfig) -> int:
    per_batch = len(config.engines) * config.iters
    baselines = len(config.baselines) * (config.reference_images + 1) if config.reference_images \
        else 0
    return len(config.batches) * per_batch + baselines + len(config.engines)


def run_bench(config: BenchConfig, advance: Callable[[str], None] = lambda _d: None) -> dict:
    """The benchmark record (see ``SCHEMA``); ``advance(description)`` is called after each step."""
    config.check()
    model, onnx_bytes, described = _load(config)
    engines = _engines(config, model, onnx_bytes)
    try:
        return _record(config, model, engines, described, advance)
    finally:
        for engine in engines.values():
            engine.close()


def _record(config: BenchConfig, model, engines: dict, described: str, advance) -> dict:
    from bincam.machine import machine_info

    first = next(iter(engines.values()))
    attributes, size = first.attributes, first.engine.info.image_size or 224
    usable, skipped = available_baselines(config.baselines) if config.reference_images and \
        model is not None else ([], {})
    baselines = {name: BASELINES[name][0](model, config.method, attributes) for name in usable}
    n = max(max(config.batches), config.fidelity_images, config.reference_images)
    images = bench_images(config.images, n, size, config.seed)
    for engine in engines.values():  # timing a model whose answers are NaN would mislead
        batch = images[:min(len(images), max(config.batches))]
        check_logits(engine.engine.run_forward(to_batch(batch)),
                     [f"benchmark image {i}" for i in range(len(batch))])
    timed, base = _measure(engines, baselines, images, config, advance)
    record = {"schema": SCHEMA, "command": sys.argv, "config": asdict(config),
              "model": {"spec": config.model, "described": described, "image_size": size,
                        "attributes": len(attributes)},
              "machine": machine_info(), "timing": _timing(engines, timed, images, config),
              "baselines": _baselines(base, timed, config, engines), "baselines_skipped": skipped}
    record["fidelity"] = (_fidelity(engines, model, config, attributes,
                                    images[:config.fidelity_images], baselines, advance)
                          if model is not None else {})
    return record
