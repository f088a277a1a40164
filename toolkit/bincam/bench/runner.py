"""Run a benchmark: latency of every (engine, batch, scope), paired ratios, peak memory, the
reference approach, and fidelity against the eager fp32 torch engine — one JSON-able record.

Timing: after ``warmup`` calls of each, every iteration runs every (engine, scope) callable once,
in an order rotated by one per iteration, so slow drift of a shared machine hits all of them alike
and the ratio of two callables can be taken per iteration (``stats.ratio_stats``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from bincam.bench.engines import OrtBenchEngine, ReferenceApproach, TorchEngine, check_engines
from bincam.bench.fidelity import compare
from bincam.bench.inputs import bench_images, to_batch
from bincam.bench.memory import PeakMemory
from bincam.bench.stats import latency_stats, ratio_stats
from bincam.errors import BincamError

SCHEMA = "bincam.bench/1"
SCOPES = ("forward", "cam", "end_to_end")


@dataclass
class BenchConfig:
    model: str                       # checkpoint folder, exported .onnx, or arch:NAME (random weights)
    engines: list[str] = field(default_factory=lambda: ["torch", "ort"])
    batches: list[int] = field(default_factory=lambda: [1, 8])
    method: str = "gradcam"
    attributes: str = "all"
    device: str = "cpu"
    warmup: int = 2
    iters: int = 10
    images: str = "synth"            # synth, random, or an image folder
    seed: int = 0
    reference_images: int = 1        # 0: skip the reference approach
    fidelity_images: int = 8
    threads: int | None = None       # ORT intra-op threads (default: one per core)
    checkpoint: str | None = None    # the torch model of an ONNX MODEL


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


def _engines(config: BenchConfig, model, onnx_bytes, attributes):
    engines = {}
    for name in check_engines(config.engines):
        if name == "torch":
            if model is None:
                raise BincamError("engine torch needs the checkpoint of this ONNX model: pass "
                                  "--checkpoint DIR (or bench ort alone)")
            engines[name] = TorchEngine(model, config.method, attributes, config.device)
        elif name == "ort":
            if onnx_bytes is None:
                from bincam.export.model import export_checkpoint

                onnx_bytes = export_checkpoint(model).SerializeToString()
            engines[name] = OrtBenchEngine(onnx_bytes, config.method, attributes, config.device,
                                           config.threads)
    return engines


def _attributes(config: BenchConfig, model, onnx_bytes) -> tuple[list[str], int]:
    from bincam.attributes import resolve_attributes

    if model is not None:
        from bincam.explanation import model_attributes

        card = getattr(model, "card", None)
        return resolve_attributes(config.attributes, model_attributes(model)), \
            card.image_size if card else 224
    from bincam.runtime.ort_engine import OrtEngine

    info = OrtEngine(onnx_bytes).info
    return resolve_attributes(config.attributes, info.attributes), info.image_size


def _time_batch(engines: dict, images: np.ndarray, config: BenchConfig,
                advance: Callable[[str], None]) -> dict:
    x = to_batch(images)
    calls = []
    for name, engine in engines.items():
        calls += [(name, "forward", lambda e=engine: e.forward(x)),
                  (name, "cam", lambda e=engine: e.cam(x)),
                  (name, "end_to_end", lambda e=engine: e.end_to_end(images))]
    for _ in range(config.warmup):
        for _n, _s, fn in calls:
            fn()
        advance("warm-up")
    samples = {(n, s): [] for n, s, _ in calls}
    for i in range(config.iters):
        shift = i % len(calls)
        for name, scope, fn in calls[shift:] + calls[:shift]:
            t0 = time.perf_counter()
            fn()
            samples[(name, scope)].append(time.perf_counter() - t0)
        advance(f"batch {len(images)}: iteration {i + 1}/{config.iters}")
    rows = []
    for name, engine in engines.items():
        with PeakMemory(cuda=config.device == "cuda" and name == "torch") as peak:
            engine.end_to_end(images)
        s = {scope: samples[(name, scope)] for scope in SCOPES}
        rows.append({
            "engine": name, "batch": len(images),
            "scopes": {scope: {**latency_stats(v, len(images)), "samples_s": v}
                       for scope, v in s.items()},
            "ratios": {"CAM / forward": ratio_stats(s["cam"], s["forward"]),
                       "e2e / forward": ratio_stats(s["end_to_end"], s["forward"])},
            "memory": {"peak_rss_bytes": peak.rss_bytes, "rss_scoped": peak.scoped,
                       "cuda_max_allocated_bytes": peak.cuda_bytes}})
    names = list(engines)
    cross = {f"{a} / {b} {label}": ratio_stats(samples[(a, scope)], samples[(b, scope)])
             for i, a in enumerate(names) for b in names[i + 1:]
             for scope, label in (("cam", "CAM"), ("end_to_end", "e2e"))}
    return {"rows": rows, "cross": cross}


def _reference(model, config, attributes, images, advance) -> dict:
    ref = ReferenceApproach(model, config.method, attributes)
    samples = []
    for i in range(config.reference_images):
        t0 = time.perf_counter()
        ref.end_to_end(images[i:i + 1])
        samples.append(time.perf_counter() - t0)
        advance(f"reference approach: image {i + 1}/{config.reference_images}")
    return {"per_image": {**latency_stats(samples), "samples_s": samples}}


def _fidelity(engines, model, config, attributes, images, reference_n, advance) -> dict:
    truth = engines.get("torch") or TorchEngine(model, config.method, attributes, config.device)
    expected = truth.outputs(images)
    out = {}
    for name, engine in engines.items():
        if name != "torch":
            out[name] = compare(engine.outputs(images), expected, attributes)
            out[name]["images"] = len(images)
        advance(f"fidelity: {name}")
    if reference_n:
        few = images[:reference_n]
        theirs = ReferenceApproach(model, config.method, attributes).outputs(few)
        mine = {k: (v[:reference_n] if v is not None else None) for k, v in expected.items()}
        out["reference"] = {**compare(theirs, mine, attributes), "images": reference_n}
        advance("fidelity: reference")
    return out


def total_steps(config: BenchConfig) -> int:
    per_batch = config.warmup + config.iters
    return len(config.batches) * per_batch + config.reference_images + len(config.engines) + 1


def run_bench(config: BenchConfig, advance: Callable[[str], None] = lambda _d: None) -> dict:
    """The benchmark record (see ``SCHEMA``); ``advance(description)`` is called after each step."""
    from bincam.machine import machine_info

    if config.iters < 3 or config.warmup < 0 or not config.batches or min(config.batches) < 1:
        raise BincamError("need --iters ≥ 3, --warmup ≥ 0 and batch sizes ≥ 1")
    if config.device not in ("cpu", "cuda"):
        raise BincamError(f"--device must be cpu or cuda, got {config.device!r}")
    model, onnx_bytes, described = _load(config)
    attributes, size = _attributes(config, model, onnx_bytes)
    if model is None:
        config.reference_images = 0
    engines = _engines(config, model, onnx_bytes, attributes)
    n = max(max(config.batches), config.fidelity_images, config.reference_images)
    images = bench_images(config.images, n, size, config.seed)
    timing = {str(b): _time_batch(engines, images[:b], config, advance) for b in config.batches}
    record = {"schema": SCHEMA, "command": sys.argv, "config": asdict(config),
              "model": {"spec": config.model, "described": described, "image_size": size,
                        "attributes": len(attributes)},
              "machine": machine_info(), "timing": timing}
    if config.reference_images:
        record["reference"] = _reference(model, config, attributes, images, advance)
        record["reference"]["vs"] = reference_ratios(record)
    record["fidelity"] = (_fidelity(engines, model, config, attributes,
                                    images[:config.fidelity_images], config.reference_images,
                                    advance) if model is not None else {})
    return record


def reference_ratios(record: dict) -> dict:
    """Reference seconds per image / engine end-to-end seconds per image, per engine and batch;
    the band combines the two spreads (their quartiles, not paired)."""
    ref = np.asarray(record["reference"]["per_image"]["samples_s"])
    out = {}
    for b, t in record["timing"].items():
        for row in t["rows"]:
            e2e = np.asarray(row["scopes"]["end_to_end"]["samples_s"]) / int(b)
            r25, r50, r75 = np.percentile(ref, (25, 50, 75))
            e25, e50, e75 = np.percentile(e2e, (25, 50, 75))
            out[f"reference / {row['engine']} e2e batch {b}"] = {
                "median": float(r50 / e50), "q25": float(r25 / e75), "q75": float(r75 / e25)}
    return out
