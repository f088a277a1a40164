"""``bincam analyze``: stream a dataset through each model, shard by shard, then report.

Shards are fixed image ranges, processed in fixed batches, so a shard's numbers do not depend on
which process computed it or when. Under ``torchrun`` rank ``r`` of ``W`` computes shards
``r, r + W, …``; rank 0 waits for all, then merges in image order and writes the report.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from bincam.analysis import store
from bincam.analysis.compute import BatchAnalyzer, CueProjector
from bincam.analysis.models import ModelSource, open_model
from bincam.analysis.stream import ImageStream
from bincam.core.checks import check_logits
from bincam.errors import BincamError


@dataclass
class AnalyzeOptions:
    models: list[str]                  # NAME=CHECKPOINT_OR_ONNX
    data: str                          # synth:DIR | celeba:DIR
    out: Path
    split: str = "test"
    frontal: bool = False
    method: str = "gradcam"
    engine: str = "ort"
    device: str = "cpu"
    batch_size: int = 64
    shard_size: int = 1024
    limit: int | None = None
    save_maps: bool = False
    cues: str = "auto"                 # auto | on | off
    workers: int = 2
    threads: int | None = None
    restart: bool = False


class Progress:
    """What the runner reports; the CLI shows it with Rich. Default: silent."""

    def start(self, model: str, total: int, done: int) -> None: ...

    def advance(self, images: int) -> None: ...


@dataclass
class World:
    rank: int = 0
    size: int = 1
    group: object = field(default=None, repr=False)

    def barrier(self) -> None:
        if self.group is not None:
            self.group.barrier()


def join_world() -> World:
    """The process group ``torchrun`` describes (gloo: it only synchronises), or one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return World(dist.get_rank(), dist.get_world_size(), dist)


def pin_gpu(world: World, device: str) -> None:
    """Under torchrun with ``--device cuda``, let each process see only its own GPU (the
    LOCAL_RANK-th visible one), whatever the engine; runs before anything initialises CUDA."""
    if world.size == 1 or not device.startswith("cuda"):
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(local + 1)]
    if local >= len(ids):
        raise BincamError(f"process {local} has no GPU of its own: CUDA_VISIBLE_DEVICES={visible}")
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[local]


def open_dataset(options: AnalyzeOptions):
    """The split (frontal filter, limit) with every listed image checked to exist."""
    from bincam.data.spec import open_split

    ds = open_split(options.data, options.split, 224, None, options.limit, options.frontal)
    missing = [f for f in ds.files if not (ds.image_dir / f).is_file()]
    if missing:
        raise BincamError(f"{len(missing)} of the {len(ds)} images of the {options.split} split "
                          f"are missing from {ds.image_dir} (e.g. {missing[0]}); restore them or "
                          "fix the list files")
    return ds


def dataset_digest(ds) -> str:
    h = hashlib.sha256()
    h.update("\n".join(ds.files).encode())
    h.update("\n".join(ds.attributes).encode())
    h.update(np.ascontiguousarray(ds.labels).tobytes())
    from bincam.data.dataset import digest_extra

    h.update(digest_extra(ds).encode())  # a CSV dataset's fit rule and regions ("" for faces)
    return h.hexdigest()


def _cue_index(options: AnalyzeOptions, ds):
    from bincam.data.synth import CueIndex, cues_path

    if options.cues not in ("auto", "on", "off"):
        raise BincamError(f"--cues must be auto, on or off, got {options.cues!r}")
    path = None if options.cues == "off" else cues_path(ds.list_dir)
    if path is None and options.cues == "on":
        raise BincamError(f"--cues on needs the cue ground truth of a synthetic dataset; "
                          f"{ds.list_dir} has no cues.jsonl")
    return CueIndex(path) if path else None


def identity(options: AnalyzeOptions, sources: list[ModelSource], ds, cues: bool) -> dict:
    from bincam import __version__

    return {"bincam": __version__, "models": [[s.name, s.digest] for s in sources],
            "dataset": dataset_digest(ds), "split": options.split, "frontal": options.frontal,
            "limit": options.limit, "method": options.method, "engine": options.engine,
            "device": options.device, "batch_size": options.batch_size,
            "shard_size": options.shard_size, "save_maps": options.save_maps, "cues": cues}


def check_options(options: AnalyzeOptions) -> list[ModelSource]:
    from bincam.core.methods import cam_method
    from bincam.files import check_output
    from bincam.runtime import ENGINES, resolve_engine

    cam_method(options.method)
    if options.engine not in ENGINES:
        raise BincamError(f"--engine must be one of {', '.join(ENGINES)}, got {options.engine!r}")
    if options.device not in ("cpu", "cuda"):
        raise BincamError(f"--device must be cpu or cuda, got {options.device!r}")
    if options.batch_size < 1 or options.shard_size < 1:
        raise BincamError("--batch-size and --shard-size must be at least 1")
    for option, value in (("--limit", options.limit), ("--workers", options.workers),
                          ("--threads", options.threads)):
        if value is not None and value < 1:
            raise BincamError(f"{option} must be at least 1, got {value}")
    check_output(options.out, "--out", folder=True)
    if options.shard_size % options.batch_size:
        raise BincamError(f"--shard-size ({options.shard_size}) must be a multiple of "
                          f"--batch-size ({options.batch_size})")
    if not options.models:
        raise BincamError("give at least one --model NAME=CHECKPOINT_OR_ONNX")
    sources = [ModelSource.parse(m) for m in options.models]
    for source in sources:
        try:
            resolve_engine(source.path, options.engine)
        except BincamError as exc:
            raise BincamError(f"model {source.name}: {exc}") from None
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise BincamError(f"model names must differ, got {', '.join(names)}")
    return sources


def analyze(options: AnalyzeOptions, progress: Progress | None = None,
            started: float | None = None) -> dict | None:
    """Run (or resume) the audit; rank 0 returns the report record, other ranks None.
    ``started``: ``time.perf_counter()`` at the start of the command (default: now), so the
    report's wall time covers all of it, exports of checkpoints to ONNX included."""
    started = time.perf_counter() if started is None else started
    progress = progress or Progress()
    sources = check_options(options)
    ds = open_dataset(options)
    cues = _cue_index(options, ds)
    facts = {s.name: _checked_facts(s, ds) for s in sources}
    ident = identity(options, sources, ds, cues is not None)
    world = join_world()
    pin_gpu(world, options.device)
    out = Path(options.out)
    if world.rank != 0:
        world.barrier()
        if not store.matches(out, ident):
            raise BincamError(f"rank {world.rank}: {out} was not prepared by rank 0")
        _run_all(options, sources, ds, cues, world, progress, out)
        return None
    store.check_target(out, ident, options.restart)  # refusals first: nothing is touched
    with store.locked(out) as created:
        try:
            store.prepare(out, ident, options.restart)
            world.barrier()
            timings = _run_all(options, sources, ds, cues, world, progress, out)
            from bincam.analysis.report import write_report

            return write_report(options, sources, facts, ds, out, timings, started)
        except BaseException:
            if created and world.size == 1:  # other ranks may still be writing shards
                store.discard_if_unstarted(out)
            raise


def _run_all(options, sources, ds, cues, world, progress, out) -> dict:
    timings = {source.name: _run_model(options, source, ds, cues, world, progress, out)
               for source in sources}
    world.barrier()
    return timings


def _checked_facts(source: ModelSource, ds):
    """The model's card/metadata facts, once its attributes are known to be the dataset's."""
    from bincam.analysis.models import describe

    facts = describe(source)
    unknown = [a for a in facts.attributes if a not in ds.attributes]
    if unknown:
        raise BincamError(f"model {source.name} has attribute(s) {', '.join(unknown[:5])} that "
                          f"the dataset lacks (its labels: {', '.join(ds.attributes[:8])}); "
                          "analyze it on a dataset labelled with the model's attributes")
    return facts


def _run_model(options, source, ds, cues, world, progress, out) -> dict:
    """Compute this rank's missing shards of one model; return its timing."""
    ranges = store.shard_ranges(len(ds), options.shard_size)
    mine = [r for i, r in enumerate(ranges) if i % world.size == world.rank]
    todo = [r for r in mine if not store.shard_path(out, source.name, *r).is_file()]
    done = sum(b - a for a, b in mine) - sum(b - a for a, b in todo)
    progress.start(source.name, sum(b - a for a, b in mine), done)
    if not todo:
        return {"images": 0, "seconds": 0.0, "open_seconds": 0.0}
    opening = time.perf_counter()  # a checkpoint given to ort/trt is exported to ONNX here
    model = open_model(source, options.engine, options.device, options.threads, out / "onnx")
    opened = {"open_seconds": time.perf_counter() - opening}
    try:
        from bincam.analysis.compute import RegionProjector
        from bincam.data.dataset import fixed_masks, has_regions, is_csv

        cols = [ds.attributes.index(a) for a in model.attributes]
        analyzer = BatchAnalyzer(model.attributes, options.method, model.image_size,
                                 model.factored, model.mask_positive, options.save_maps,
                                 fixed_masks(ds, model.attributes, model.image_size)
                                 if is_csv(ds) else None)
        energy = analyzer.energy(model.feature_size()) if cues or has_regions(ds) else None
        project = CueProjector(model.attributes, model.image_size, energy) if cues else None
        regions = RegionProjector(ds, model.attributes, model.image_size, energy) \
            if has_regions(ds) else None
        stream = ImageStream(ds, model.image_size, options.workers, cues=cues, project=project,
                             regions=regions)
        plan = [(shard, np.arange(s, min(s + options.batch_size, shard[1])))
                for shard in todo for s in range(shard[0], shard[1], options.batch_size)]
        with threadpool_limits(1, user_api="blas"):
            return _stream_shards(plan, stream, model, analyzer, ds.labels[:, cols], progress,
                                  out, source.name) | opened
    finally:
        model.close()


def _stream_shards(plan, stream, model, analyzer, labels, progress, out, name) -> dict:
    """Run the planned batches; write each shard when its last batch is done.

    One stream covers every batch of every shard, so decoding runs ahead across shard
    boundaries. NumPy's BLAS is held to one thread meanwhile: its idle threads spin after each
    small GEMM and took a core from the engine's next run (measured: 50 → 100 ms per batch)."""
    images, seconds, parts, sums = 0, 0.0, [], None
    t0 = time.perf_counter()
    for (shard, _), (idx, pixels, cue, region) in zip(plan, stream.batches([b for _, b in plan])):
        result = model.run(pixels)
        check_logits(result["logits"], [stream.ds.files[i] for i in idx])
        part, batch_sums = analyzer(result, idx, labels[idx], pixels, cue, region)
        parts.append(part)
        if sums is None:
            sums = batch_sums
        else:
            sums.add(batch_sums)
        progress.advance(len(idx))
        if idx[-1] + 1 == shard[1]:
            merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            elapsed = time.perf_counter() - t0
            store.write_shard(store.shard_path(out, name, *shard),
                              merged | sums.as_dict() | {"seconds": np.float64(elapsed)})
            images, seconds = images + shard[1] - shard[0], seconds + elapsed
            parts, sums, t0 = [], None, time.perf_counter()
    return {"images": images, "seconds": seconds}
