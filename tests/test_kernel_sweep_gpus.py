"""The fused epilogue's geometry on every GPU bincam claims (bincam.gpu.sweep_gpus): all
combinations of GPU × CAM tensor × layout × method × batch × attributes meet the geometry's
invariants; the invariants would have caught the empty split of the old rule; the race's kernel
class runs on the CPU emulator under AddressSanitizer + UBSan and ThreadSanitizer (the whole
set: benchmarks/kernel_sweep_gpus.py); the kernel compiles for sm_80, sm_90 and sm_100 without
spills where nvcc is present."""

import math
import os
import re
import shutil
import subprocess

import pytest

from bincam.core.methods import METHODS
from bincam.gpu.geometry import launch_geometry
from bincam.gpu.launcher import kernel_source
from bincam.gpu.sweep_gpus import (ATTRIBUTES, BATCHES, GPUS, LAYOUTS, Combination,
                                   combinations, emulation_cost, enumerate_all, geometry_of,
                                   kernel_classes, probe, representatives, shrink,
                                   representative_case, split_bounds, tensors, violations)


def test_every_claimed_gpu_and_tensor_meets_the_geometry_invariants():
    """~99k combinations (7 GPUs × 57 tensors of the tables and stress widths × 3 layouts × 6
    methods × 4 batches × 2 attribute counts) through launch_geometry: no empty split, splits
    cover [0, C) exactly, tile and attribute group in range, shared memory ≤ 48 KiB, grids
    within CUDA's limits; and they fall into a few hundred kernel classes."""
    enum = enumerate_all()
    assert enum.combinations == (len(GPUS) * len(tensors()) * len(LAYOUTS) * len(METHODS)
                                 * len(BATCHES) * len(ATTRIBUTES))
    assert not enum.broken, enum.broken[:3]
    kernels = {kernel for kernel, _ in enum.classes}
    assert kernels == {"partials dense", "partials factored", "finish", "energy", "method"}
    assert 50 < len(enum.classes) < 1000
    # the channel counts of the issue are in, on every GPU
    widths = {c.channels for c in combinations() if c.gpu == "H100 SXM"}
    assert {1512, 2520, 3024, 97, 33, 1} <= widths


def test_probes_keep_the_partials_geometry_and_the_representatives_cover_every_class():
    """A probe (the combination without its resize) gets the same splits, tile and attribute
    group, so the same partials and energy classes; the representatives, probes among them,
    cover every class the claimed combinations reach, and the probes make them cheaper."""
    for c in combinations()[::97]:
        g, gp = geometry_of(c), geometry_of(probe(c))
        assert (g.splits, g.tile, g.kc, g.grid_partials) == (gp.splits, gp.tile, gp.kc,
                                                             gp.grid_partials)
        ours, theirs = kernel_classes(c, g), kernel_classes(probe(c), gp)
        for kernel in ours:
            if kernel != "finish":
                assert ours[kernel] == theirs[kernel]
    with_probes, without = enumerate_all(), enumerate_all(probes=False)
    assert set(with_probes.classes) == set(without.classes)
    for enum in (with_probes, without):
        reps = representatives(enum)
        covered = {kv for c in reps for kv in kernel_classes(c, geometry_of(c)).items()}
        assert set(enum.classes) <= covered
    cost = lambda enum: sum(emulation_cost(c, geometry_of(c)) for c in representatives(enum))
    assert cost(with_probes) * 2 < cost(without)


def test_channel_probes_keep_every_class_covered_and_cost_less():
    """``shrink``: the representatives from ``start`` on with fewer channels still cover every
    class; EfficientNetV2's dense tile class (1280 channels at 12×12, batch 8 × 40 maps) is
    reached with far fewer channels, under the same invariants."""
    enum = enumerate_all()
    reps = representatives(enum)
    start = len(reps) - 12
    shrunk = shrink(reps, enum, start)
    assert shrunk[:start] == reps[:start]
    covered = {kv for c in shrunk for kv in kernel_classes(c, geometry_of(c)).items()}
    assert set(enum.classes) <= covered
    cost = lambda rs: sum(emulation_cost(c, geometry_of(c)) for c in rs)
    assert cost(shrunk) * 1.5 < cost(reps)
    assert all(violations(c, geometry_of(c)) == [] for c in shrunk)
    assert min(c.channels for c in shrunk[start:]) < 100


def test_the_invariants_catch_the_old_empty_split():
    """The rule before the fix, ``S = min(⌈2·sms/(B·K)⌉, ⌊C/32⌋)`` without rounding to
    ``⌈C/⌈C/S⌉⌉``, gives an empty last split for many claimed combinations (RegNetY-3.2GF's
    1512 channels at batch 1 on an H100 among them); ``violations`` reports each."""
    combo = Combination("H100 SXM", "timm/regnety_032", "dense", True, "gradcam", 1, 1, 1512,
                        (7, 7), (224, 224))
    old = launch_geometry("dense", combo.shape, combo.size, 256, sms=132, splits=47)
    assert any("empty split" in v for v in violations(combo, old))
    assert violations(combo, geometry_of(combo)) == []
    empty = 0
    for c in combinations():
        if c.layout != "dense" or c.method != "gradcam":
            continue
        b, k, ch = c.batch, c.attributes, c.channels
        s_old = min(math.ceil(2 * c.sms / (b * k)), max(1, ch // 32))
        empty += any(lo >= hi for lo, hi in split_bounds(ch, s_old))
    assert empty > 50


def test_split_bounds_are_the_kernels():
    """``split_bounds`` is ``bincam_split`` of the kernel source: ``per = ⌈C/S⌉``."""
    assert "const int per = (C + splits - 1) / splits;" in kernel_source()
    assert split_bounds(9, 4) == [(0, 3), (3, 6), (6, 9), (9, 9)]
    assert split_bounds(10, 3) == [(0, 4), (4, 8), (8, 10)]


def _cheapest(accept):
    """The cheapest combination to emulate among those whose kernel classes ``accept``."""
    found = [(emulation_cost(c, g), str(c), c) for c in combinations()
             for g in [geometry_of(c)] if accept(c, kernel_classes(c, g))]
    return min(found)[2]


def _race_class():
    """The cheapest dense Grad-CAM++ launch with several splits, the last one short: the class
    of the race (its weights add a barrier per tile)."""
    def dense_short(c, classes):
        split = dict(classes.get("partials dense", ()))
        return (c.method == "gradcam++" and split.get("splits") == "many"
                and split.get("last split") == "short")

    return _cheapest(dense_short)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None
                    and not os.environ.get("BINCAM_REQUIRE_KERNEL_EMULATION"),
                    reason="no C++ compiler (scripts/emulation_setup.sh installs g++)")
@pytest.mark.parametrize("sanitizer", ["address", "thread"])
def test_representatives_on_the_emulator(sanitizer):
    """The race's class under both sanitizers: the reference's outputs (every class:
    benchmarks/kernel_sweep_gpus.py; factored launches: tests/test_kernel_emulation.py)."""
    from bincam.gpu.emulation import build_driver, run_cases
    from bincam.gpu.sweep import compare, failures

    cases = [representative_case(_race_class(), 0)]
    outs = run_cases(build_driver(sanitizer), cases)
    bad = {i: failures(compare(c, o)) for i, (c, o) in enumerate(zip(cases, outs))}
    assert not any(bad.values()), bad


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90", "sm_100"])
def test_kernel_compiles_for_the_claimed_architectures(arch, tmp_path):
    """nvcc (device code only, as NVRTC sees it) builds every kernel for ``arch``; ptxas
    reports no spill (the kernels keep their state in registers: a division helper once made
    sm_90 spill)."""
    source = tmp_path / "kernel.cu"
    source.write_text(kernel_source())
    proc = subprocess.run(["nvcc", f"-arch={arch}", "--cubin", "-Xptxas", "-v", "-o",
                           str(tmp_path / "kernel.cubin"), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entries = re.findall(r"Compiling entry function '(\w+)'", proc.stderr)
    assert set(entries) == {"bincam_partials_dense", "bincam_partials_factored",
                            "bincam_finish", "bincam_energy"}
    spills = re.findall(r"(\d+) bytes spill stores", proc.stderr)
    assert spills and all(n == "0" for n in spills), proc.stderr


def test_finish_no_longer_divides_per_pixel():
    """``gpu.roofline.kernel_divisions``: before, two divisions per output pixel in finish and
    one per element loaded in the dense partials; the kernel source now walks rows and columns
    (``bincam_walk``) and multiplies by a reciprocal (``bincam_divider``) instead."""
    from bincam.gpu.roofline import kernel_divisions

    source = kernel_source()
    assert "q / W" not in source and "q % W" not in source and "i / hw" not in source
    assert "bincam_walk ij(" in source and "by_hw.div(i)" in source
    for layout in ("dense", "factored"):
        div = kernel_divisions(layout, (8, 40, 2048, 7, 7), (224, 224))
        assert div["finish"]["before"] >= 2 * 8 * 40 * 224 * 224
        assert div["finish"]["after"] * 50 < div["finish"]["before"]
    dense = kernel_divisions("dense", (8, 40, 2048, 7, 7), (224, 224))["partials"]
    assert dense["after"] * 10 < dense["before"]
