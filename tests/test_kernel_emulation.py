"""The fused epilogue's CUDA kernels executed on the CPU from their own source (kernels/emulation:
a std::thread per CUDA thread, barriers for __syncthreads and warp intrinsics), under
AddressSanitizer + UBSan and ThreadSanitizer, against the float64 NumPy reference; a mutation
(one __syncthreads removed) must make ThreadSanitizer fail. Skipped only where no C++ compiler
exists and BINCAM_REQUIRE_KERNEL_EMULATION is unset."""

import os
import numpy as np
import pytest

from bincam.gpu.emulation import Case, EmulationError, build_driver, find_compiler, \
    from_half_bits, run_cases, to_half_bits
from bincam.gpu.geometry import launch_geometry
from bincam.gpu.launcher import kernel_source
from bincam.gpu.sweep import compare, failures, half_bits, sweep_cases

if find_compiler() is None and not os.environ.get("BINCAM_REQUIRE_KERNEL_EMULATION"):
    pytest.skip("no C++ compiler (scripts/emulation_setup.sh installs g++)",
                allow_module_level=True)


@pytest.fixture(scope="session")
def asan():
    return build_driver("address")


@pytest.fixture(scope="session")
def tsan():
    return build_driver("thread")


def _check_all(driver, cases):
    bad = {}
    for i, (case, out) in enumerate(zip(cases, run_cases(driver, cases))):
        errors = failures(compare(case, out))
        if errors:
            bad[(i, case.method, case.layout, case.mode, case.mask_positive, case.block)] = errors
    assert not bad, bad


def test_sweep_under_address_sanitizer(asan):
    """All 54 method × layout × mode × mask choices, each with another block size, shape and
    geometry, NaN and zero cases among them: every output equals the reference."""
    cases = sweep_cases()
    assert len(cases) == 54 and {c.block for c in cases} >= {1, 7, 40, 100, 256}
    assert {c.half_inputs for c in cases} == {True, False}
    _check_all(asan, cases)


def test_sweep_under_thread_sanitizer(tsan):
    """The sweep's cases with blocks of at most 100 threads (partial warps included) on fresh
    inputs: no data race, and the reference's outputs."""
    cases = [c for c in sweep_cases(seed=1) if c.block <= 100]
    assert {c.layout for c in cases} == {"dense", "factored"} and {1, 7, 40} <= {c.block for c in cases}
    _check_all(tsan, cases)


def test_gradcam_plus_plus_survives_a_near_singular_denominator(asan):
    """Grad-CAM++'s ``α = g²/(2g² + Σ_hw A·g³ + 1e-6)`` is ill-conditioned where ``Σ_hw A·g``
    nears −2: here ``g = 0.5`` and ``Σ_hw A = −4 + 1e-8``, which float32 rounds to −4, so a
    float32 denominator is 1e-6 where the exact one is 1.00125e-6 (α off by 1.2e-3, and this
    channel dominates the map). Signed random activations at C = 2048 meet such channels, so the
    kernel must evaluate α in double, as the float64 reference does."""
    acts = np.zeros((1, 2, 3, 3), dtype=np.float32)
    acts[0, 0, 0, 0], acts[0, 0, 1, 1] = -4.0, 1e-8
    acts[0, 1] = np.linspace(0.1, 0.9, 9, dtype=np.float32).reshape(3, 3)
    logits, masks = np.ones((1, 1), dtype=np.float32), np.zeros((1, 6, 6), dtype=np.uint8)
    masks[0, :3] = 1
    dense = np.full((1, 1, 2, 3, 3), 0.5, dtype=np.float32)
    _check_all(asan, [Case(acts, dense, logits, (6, 6), "gradcam++", "dense", masks=masks,
                           block=32),
                      Case(acts, np.full((1, 2), 0.5, dtype=np.float32), logits, (6, 6),
                           "gradcam++", "factored", mask_positive=False, masks=masks, block=32)])


def test_gpu_checks_own_inputs_and_limits_on_the_emulator(asan):
    """``benchmarks/gpu_check.py``'s comparison (``gpu.check.reference_errors``, ``LIMITS``) on
    its own inputs (signed activations, the first K attributes' masks), smaller, with the kernels
    on the emulator: their arithmetic meets every limit (a GPU adds FMA contraction and its own
    rounding, which the emulator does not model)."""
    from bincam.gpu.check import LIMITS, emulated_check

    rows = emulated_check(asan, seed=1, b=2, k=4, c=160, h=7, size=40, block=64)
    assert len(rows) == 12 and all(set(LIMITS) <= set(r) for r in rows)
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]


def test_outputs_are_optional_and_poisoned_buffers_are_written(asan):
    """Only the maps that are asked for are written; every requested element is (NaN-poisoned
    buffers would show otherwise); without energies no tile energy is read."""
    rng = np.random.default_rng(5)
    acts = rng.random((2, 16, 4, 4), dtype=np.float32)  # ≥ 0: no NaN can come from the data
    grads = rng.normal(size=(3, 16)).astype(np.float32)
    logits = rng.normal(size=(2, 3)).astype(np.float32)
    for outputs in (("maps_u8",), ("raw", "maps")):
        case = Case(acts, grads, logits, (10, 12), "layercam", "factored", outputs=outputs,
                    block=96)
        (out,) = run_cases(asan, [case])
        assert set(out) == set(outputs)
        assert all(np.isfinite(v).all() for v in out.values())


def test_half_conversion_is_round_to_nearest_even(asan):
    """bincam_to_half's host branch (the emulator's stand-in for cvt.rn.f16.f32) equals NumPy's
    float16 rounding on random bit patterns and on the edges (ties, subnormals, overflow)."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    edges = np.array([0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 1e9, -np.inf, 2**-24, 2**-25,
                      3 * 2**-26, 2**-14, 2**-14 - 2**-25, 1 + 2**-11, 1 + 3 * 2**-11],
                     dtype=np.float32)
    values = np.concatenate([bits.view(np.float32), edges])
    got, want = to_half_bits(asan, values), half_bits(values)
    nan = np.isnan(values)
    assert np.array_equal(got[~nan], want[~nan])
    assert (got[nan] == 0x7fff).all()  # the canonical NaN cvt.rn.f16.f32 writes


def test_half_inputs_are_read_exactly(asan):
    """bincam_from_half's host branch (for cvt.f32.f16) on all 65,536 binary16 patterns equals
    NumPy's exact widening (NaN stays NaN, ±0, subnormals and infinities included)."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got, want = from_half_bits(asan, bits), bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.isnan(got[nan]).all()
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def _mutated_cases():
    rng = np.random.default_rng(2)
    cases = []
    for layout, method in (("dense", "gradcam"), ("dense", "hirescam"), ("factored", "xgradcam")):
        acts = rng.normal(size=(2, 40, 5, 6)).astype(np.float32)
        grads = (rng.normal(size=(2, 3, 40, 5, 6)) if layout == "dense"
                 else rng.normal(size=(3, 40))).astype(np.float32)
        masks = (rng.random((3, 24, 30)) > 0.5).astype(np.uint8)
        cases.append(Case(acts, grads, rng.normal(size=(2, 3)).astype(np.float32), (24, 30),
                          method, layout, masks=masks, block=64,
                          overrides={"sms": 2, "tile": 8}))
    return cases + [_empty_split_case("gradcam", "dense", 9, 4)]


def _without(source, marker):
    """``source`` without the ``__syncthreads();`` on the line commented ``marker``."""
    lines = source.splitlines(keepends=True)
    (i,) = [n for n, line in enumerate(lines) if marker in line and "__syncthreads();" in line]
    lines[i] = lines[i].replace("__syncthreads();", "/* removed */", 1)
    return "".join(lines)


@pytest.mark.parametrize("marker", ["// the next tile overwrites gt and at",
                                    "// the list and its count are complete",
                                    "// earlier readers of scratch are done",
                                    "// zeroing before any read of acc, even where the split"])
def test_a_removed_syncthreads_is_caught(tsan, marker):
    """The harness fails a kernel with one __syncthreads() less: ThreadSanitizer reports the
    race (here the one after the dense tile loop, the one inside the run-end compaction, and
    the one between two block reductions: only threads of other warps race there, which
    std::barrier's shared wait pool hid from ThreadSanitizer before the emulator had its own)."""
    cases = _mutated_cases()
    _check_all(tsan, cases)  # the intact kernel passes these cases
    mutant = build_driver("thread", _without(kernel_source(), marker))
    with pytest.raises(EmulationError, match="data race"):
        run_cases(mutant, cases, timeout=300)


def test_a_full_mask_on_a_partial_warp_is_refused(asan):
    """The emulator is stricter than the hardware: a full-mask shuffle over a warp with absent
    lanes (undefined in CUDA; the old kernel relied on a launcher check to avoid it) aborts, so
    the kernels' exact masks are what lets blocks of 40 or 100 threads pass the sweep."""
    source = kernel_source().replace(
        "return lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);", "return 0xffffffffu;")
    assert source != kernel_source()
    mutant = build_driver("address", source)
    case = _mutated_cases()[0]
    run_cases(mutant, [case])  # whole warps: fine
    case.block = 40
    with pytest.raises(EmulationError, match="mask other than the warp's present lanes"):
        run_cases(mutant, [case])


def test_geometry_fills_the_gpu_at_batch_one():
    """AFFACT at 224 on 132 SMs: batch 1 gets ≥ 264 dense partial blocks and ≥ 264 finishing
    blocks; factored partials read each image's activations once for all 40 attributes."""
    dense = launch_geometry("dense", (1, 40, 2048, 7, 7), (224, 224), 256, sms=132)
    assert dense.grid_partials[0] * dense.grid_partials[1] >= 264
    assert dense.grid_finish[0] * dense.grid_finish[1] >= 264
    factored = launch_geometry("factored", (8, 40, 2048, 7, 7), (224, 224), 256, sms=132)
    assert factored.kc == 40 and factored.grid_partials[2] == 1  # one attribute group
    assert 2048 / factored.splits >= 40  # partial sums written ≤ activations read
    for g in (dense, factored):
        assert max(g.smem_partials, g.smem_finish) <= 48 * 1024  # no opt-in needed
    big = launch_geometry("factored", (1, 40, 64, 40, 40), (160, 160), 256)
    assert big.kc < 40 and big.smem_partials <= 48 * 1024


def _empty_split_case(method, layout, c, splits, seed=0):
    rng = np.random.default_rng(seed)
    b, k, h, w = 1, 2, 3, 3
    grads = rng.standard_normal((b, k, c, h, w) if layout == "dense" else (k, c))
    return Case(rng.standard_normal((b, c, h, w)), grads, rng.standard_normal((b, k)), (5, 5),
                method, layout, masks=(rng.random((k, 5, 5)) < 0.5), block=40,
                overrides={"splits": splits}, seed=seed)


def test_an_empty_channel_split_is_ordered_after_its_zeroing(tsan):
    """C = 9 over 4 splits of 3 channels leaves the last split empty (its channel-tile loop and
    barrier never run): the final read of the accumulators must still be ordered after their
    zeroing by other threads (failed under ThreadSanitizer before the barrier after zeroing)."""
    cases = [_empty_split_case(m, layout, 9, 4, seed=i)
             for i, (m, layout) in enumerate([("gradcam", "dense"), ("layercam", "dense"),
                                              ("gradcam", "factored")])]
    _check_all(tsan, cases)


@pytest.mark.parametrize("sms", [58, 108, 114, 132, 142, 148, 1, 2, 1000])
def test_automatic_geometry_never_makes_an_empty_split(sms):
    """Every split of the automatic choice holds ≥ 1 channel (split s: channels
    [s·⌈C/S⌉, min(C, (s+1)·⌈C/S⌉))), for C = 1…4096 at batch 1, 8 and attribute counts 1, 40."""
    for layout in ("dense", "factored"):
        for b, k in ((1, 1), (1, 40), (8, 40)):
            for c in range(1, 4097):
                g = launch_geometry(layout, (b, k, c, 7, 7), (56, 56), 256, sms=sms,
                                    shared_limit=1 << 30)
                per = -(-c // g.splits)
                assert (g.splits - 1) * per < c, (layout, b, k, c, sms, g.splits)
    g = launch_geometry("dense", (1, 1, 1512, 7, 7), (56, 56), 256, sms=132)
    assert (g.splits - 1) * -(-1512 // g.splits) < 1512


def test_the_reported_1512_channel_launch_has_no_nan(asan):
    """The issue's shape: (1, 1, 1512, 7, 7) → 56×56 at 132 SMs took 47 splits of 33 channels,
    the last empty, and returned NaN maps; now the geometry makes 46, and 47 forced splits
    (the kernel's side) equal the reference too."""
    assert launch_geometry("dense", (1, 1, 1512, 7, 7), (56, 56), 256, sms=132).splits == 46
    rng = np.random.default_rng(0)
    cases = [Case(rng.standard_normal((1, 1512, 7, 7)), rng.standard_normal((1, 1, 1512, 7, 7)),
                  rng.standard_normal((1, 1)), (56, 56), "gradcam", "dense",
                  masks=rng.random((1, 56, 56)) < 0.5, block=256, overrides=extra)
             for extra in ({"splits": 47}, {})]
    _check_all(asan, cases)
