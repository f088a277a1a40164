"""The fused CUDA epilogue: its NumPy reference equals the core's methods, epilogue and PE, its
method and mode numbers are the core's and the kernel's, the kernel compiles for sm_80 and sm_90
(NVRTC, and nvcc where present), and on a GPU it equals the reference."""

import importlib.util
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from bincam.attributes import ATTRIBUTES, attribute_masks
from bincam.core.energy import proportional_energy_full
from bincam.core.epilogue import epilogue
from bincam.core.methods import METHODS, Factored, raw_maps
from bincam.core.modes import MODES, signs
from bincam.errors import BincamError
from bincam.gpu.reference import fused_epilogue_reference

HAS_NVRTC = importlib.util.find_spec("cuda") is not None and \
    importlib.util.find_spec("cuda.bindings") is not None
# the kernel's enum constant of each core method
KERNEL_METHODS = {"gradcam": "BINCAM_GRADCAM", "hirescam": "BINCAM_HIRESCAM",
                  "gradcam-elementwise": "BINCAM_ELEMENTWISE", "xgradcam": "BINCAM_XGRADCAM",
                  "gradcam++": "BINCAM_GRADCAMPP", "layercam": "BINCAM_LAYERCAM"}


def _inputs(seed, b=3, k=5, c=16, h=7, w=7):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(b, c, h, w))
    a[-1, -1] = 0.0     # an all-zero activation channel (Σ_hw A = 0 in XGrad-CAM, Grad-CAM++)
    logits = rng.normal(size=(b, k))
    logits[0, 0] = 0.0  # z = 0: an empty map in predicted mode
    return a, rng.normal(size=(b, k, c, h, w)) / 49, rng.normal(size=(k, c)) / 49, logits


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("layout", ["dense", "factored", "factored-unmasked"])
@pytest.mark.parametrize("mode", list(MODES))
def test_reference_equals_the_core(method, layout, mode):
    """Reference = core epilogue + full PE of the core's raw maps; the factored gradient
    ``s·W[k,c]·1[A > 0]`` is expanded to the dense tensor, so the core's factored shortcuts
    are checked too."""
    a, dense, weight, logits = _inputs(3)
    masks = attribute_masks(ATTRIBUTES[:5], 112)
    s = signs(logits, mode)
    if layout == "dense":
        grads, g = dense, s[:, :, None, None, None] * dense
    else:
        mask = (a > 0).astype(float) if layout == "factored" else None
        grads, g = weight, Factored(s, weight, mask).dense(a.shape[2:])
    ref = fused_epilogue_reference(a, grads, logits, (112, 112), method, layout.split("-")[0],
                                   mode, layout == "factored", masks)
    raw = raw_maps(method, a, g)
    assert np.abs(ref["raw"] - raw).max() < 1e-12
    maps = epilogue(raw, 112)
    assert np.abs(ref["maps"] - maps).max() < 1e-12
    assert np.array_equal(ref["maps_u8"], np.rint(maps * 255).astype(np.uint8))
    assert np.abs(ref["pe"] - proportional_energy_full(maps, masks)).max() < 1e-12
    assert np.allclose(ref["energy"][..., 1], maps.sum(axis=(2, 3)), rtol=1e-12)
    if mode == "predicted":
        assert ref["maps"][0, 0].max() == 0 and ref["pe"][0, 0] == 0


def test_reference_upsamples_other_shapes():
    a, dense, _, logits = _inputs(4, b=1, k=2, c=4, h=4, w=6)
    ref = fused_epilogue_reference(a, dense, logits, (50, 75))
    raw = raw_maps("gradcam", a, signs(logits, "predicted")[:, :, None, None, None] * dense)
    maps = epilogue(raw, (50, 75))
    assert ref["maps"].shape == (1, 2, 50, 75) and np.abs(ref["maps"] - maps).max() < 1e-12
    with pytest.raises(BincamError, match="unknown method 'scorecam'"):
        fused_epilogue_reference(a, dense, logits, (8, 8), method="scorecam")


def test_check_torch_path_equals_the_reference():
    """The GPU check's torch baseline (core methods on torch tensors, torch epilogue), here on
    the CPU, against the float64 reference."""
    from bincam.gpu.check import case_inputs, torch_cuda_path

    for layout in ("dense", "factored"):
        for method in METHODS:
            x = case_inputs(layout, method, 0, b=2, k=3, c=32, h=7, size=56, device="cpu")
            ref = fused_epilogue_reference(*(x[n].numpy() for n in ("acts", "grads", "logits")),
                                           (56, 56), method, layout, "predicted", True,
                                           x["masks"].numpy())
            th = torch_cuda_path(x, layout, method, 56)
            assert np.abs(th["raw"].numpy() - ref["raw"]).max() < 1e-12, (layout, method)
            assert np.abs(th["maps"].numpy() - ref["maps"]).max() < 1e-5, (layout, method)
            assert np.abs(th["pe"].numpy() - ref["pe"]).max() < 1e-5, (layout, method)
    # signed activations for every method (XGrad-CAM's near-zero Σ A included: the kernel sums
    # channels in double, so the GPU check needs no post-ReLU inputs)
    assert (case_inputs("dense", "xgradcam", 0, 1, 1, 4, 7, 8, device="cpu")["acts"] < 0).any()


def test_method_and_mode_ids_are_the_core_and_the_kernel_constants():
    from bincam.gpu.launcher import kernel_source

    code = kernel_source()
    constants = {name: int(value) for name, value in
                 re.findall(r"\b(BINCAM_[A-Z]+)\s*=\s*(\d+)", code)}
    assert set(KERNEL_METHODS) == set(METHODS)
    body = code.split("bincam_partials_dense(", 1)[1]
    for name, method in METHODS.items():
        assert constants[KERNEL_METHODS[name]] == method.id, name
        # LayerCAM is the last branch of the per-element methods' chain, the `else`
        branches = KERNEL_METHODS[name] in body or (name == "layercam" and "// LayerCAM" in body)
        assert branches, f"the kernel never branches on {name}"
    for mode, mode_id in MODES.items():
        assert constants[f"BINCAM_{mode.upper()}"] == mode_id, mode
    assert len(METHODS) == len({m.id for m in METHODS.values()}) == 6


def _signature(code, kernel):
    head = re.search(kernel + r"\((.*?)\)\s*\{", code, re.S).group(1)
    params = [p.strip() for p in head.split(",")]
    kinds = ["pointer" if "*" in p else p.split()[0] for p in params]
    return kinds, [re.split(r"[\s*]+", p)[-1] for p in params]


@pytest.mark.parametrize("layout", ["dense", "factored"])
def test_launch_arguments_match_the_kernel_signatures(layout):
    """The launcher packs one argument per kernel parameter, pointers as 64-bit, ints as int32,
    in the order of each signature in the .cu file (a mismatch would corrupt every launch)."""
    from bincam.gpu.geometry import kernel_arguments, launch_geometry
    from bincam.gpu.launcher import KERNELS, kernel_source

    code = re.sub(r"//[^\n]*", "", kernel_source())
    shape, size = (2, 40, 512, 7, 7), (224, 160)
    g = launch_geometry(layout, shape, size, 128, sms=16)
    args = kernel_arguments(g, acts=1, grads=2, logits=3, shape=shape, size=size,
                            method="hirescam", layout=layout, mode="negative",
                            mask_positive=False, partial=10, tile_energy=11, half_inputs=True,
                            masks=4, raw=5,
                            maps_f32=6, maps_f16=7, maps_u8=8, energy=9)
    assert set(args) <= set(KERNELS) and len(args) == 3
    values = {}
    for kernel, packed in args.items():
        kinds, names = _signature(code, kernel)
        assert len(packed) == len(kinds), kernel
        for kind, arg in zip(kinds, packed):
            assert (kind, arg.dtype) in (("pointer", np.uint64), ("int", np.int32)), (kind, arg)
        values[kernel] = dict(zip(names, (int(a) for a in packed)))
    partials = values[f"bincam_partials_{layout}"]
    assert partials["acts"] == 1 and partials["logits"] == 3 and partials["partial"] == 10
    assert partials[("grads" if layout == "dense" else "weights")] == 2
    assert (partials["K"], partials["C"], partials["hw"], partials["method"], partials["mode"],
            partials["half"], partials["splits"], partials["tile"]) == \
        (40, 512, 49, 1, 2, 1, g.splits, g.tile)
    if layout == "factored":
        assert partials["mask_positive"] == 0 and partials["kc"] == g.kc
    assert values["bincam_finish"] == {"partial": 10, "masks": 4, "K": 40, "h": 7, "w": 7,
                                       "H": 224, "W": 160, "splits": g.splits, "tiles": g.tiles,
                                       "raw_out": 5, "maps_f32": 6, "maps_f16": 7, "maps_u8": 8,
                                       "tile_energy": 11}
    assert values["bincam_energy"] == {"tile_energy": 11, "maps": 80, "tiles": g.tiles,
                                       "energy": 9}
    no_energy = kernel_arguments(g, acts=1, grads=2, logits=3, shape=shape, size=size,
                                 method="gradcam", layout=layout, mode="predicted",
                                 mask_positive=True, partial=10, tile_energy=11)
    assert "bincam_energy" not in no_energy and int(no_energy["bincam_finish"][-1]) == 0
    for method in METHODS:
        packed = kernel_arguments(g, acts=1, grads=2, logits=3, shape=shape, size=size,
                                  method=method, layout=layout, mode="predicted",
                                  mask_positive=True, partial=10, tile_energy=11)
        assert int(packed[f"bincam_partials_{layout}"][6]) == METHODS[method].id
    with pytest.raises(BincamError, match="the fused kernel takes method gradcam/hirescam"):
        kernel_arguments(g, acts=1, grads=2, logits=3, shape=shape, size=size,
                         method="scorecam", layout=layout, mode="predicted", mask_positive=True,
                         partial=10, tile_energy=11)


PTXAS_FUNCTION = re.compile(r"Compiling entry function '(\w+)'.*?(\d+) bytes spill stores, "
                            r"(\d+) bytes spill loads.*?Used (\d+) registers", re.S)


@pytest.mark.skipif(not HAS_NVRTC, reason="cuda-python is not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_ptxas_registers_and_spills(arch):
    """ptxas -v through NVRTC: every kernel without spills and at most 64 registers (so that
    four blocks of 256 threads fit an SM's 64 K registers)."""
    from bincam.gpu.launcher import KERNELS, compile_kernel

    log = []
    compile_kernel(arch, ptxas_verbose=True, log=log)
    found = {m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(4)))
             for m in PTXAS_FUNCTION.finditer(log[0])}
    assert set(found) == set(KERNELS), log[0]
    for name, (stores, loads, registers) in found.items():
        assert stores == loads == 0 and registers <= 64, (arch, name, found[name])


@pytest.mark.skipif(not HAS_NVRTC, reason="cuda-python is not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90", "compute_80"])
def test_kernel_compiles_with_nvrtc(arch, tmp_path, monkeypatch):
    from bincam.gpu import launcher

    out = launcher.compile_kernel(arch)
    if arch.startswith("sm_"):
        assert out[:4] == b"\x7fELF" and len(out) > 1000  # a cubin is an ELF image
    else:
        assert all(f".entry {name}".encode() in out for name in launcher.KERNELS)
        assert f".target {arch.replace('compute', 'sm')}".encode() in out
    monkeypatch.setenv("BINCAM_CACHE", str(tmp_path))
    if arch.startswith("sm_"):
        first = launcher.cached_cubin(arch)
        files = list((tmp_path / "kernels").iterdir())
        assert len(files) == 1 and launcher.cached_cubin(arch) == first


@pytest.mark.skipif(not HAS_NVRTC, reason="cuda-python is not installed")
def test_compile_errors_are_reported_with_the_log():
    from bincam.gpu import launcher

    with pytest.raises(BincamError, match="compilation for sm_80 failed.*undefined"):
        launcher.compile_kernel("sm_80", "extern \"C\" __global__ void f() { g(); }")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_kernel_compiles_with_nvcc(arch, tmp_path):
    from bincam.gpu.launcher import kernel_source

    src = tmp_path / "k.cu"
    src.write_text(kernel_source())
    proc = subprocess.run(["nvcc", "-cubin", f"-arch={arch}", "-Werror", "all-warnings",
                           str(src), "-o", str(tmp_path / "k.cubin")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "k.cubin").stat().st_size > 1000


def _has_gpu():
    if not HAS_NVRTC:
        return False
    try:
        from cuda.bindings import driver

        return driver.cuInit(0)[0] == driver.CUresult.CUDA_SUCCESS and \
            driver.cuDeviceGetCount()[1] > 0
    except Exception:  # noqa: BLE001 - no driver library at all
        return False


@pytest.mark.skipif(not _has_gpu() or not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("layout", ["dense", "factored"])
def test_kernel_on_gpu_equals_the_reference(layout, method):
    from bincam.gpu.check import run_fused_case

    err = run_fused_case(layout=layout, method=method, seed=11)
    assert err["maps max abs"] <= 1e-5 and err["PE max abs"] <= 1e-5 and err["raw rel"] <= 1e-5


@pytest.mark.skipif(not _has_gpu(), reason="no CUDA GPU")
def test_launcher_refuses_bad_blocks_and_leaves_the_context():
    from cuda.bindings import driver

    from bincam.gpu.launcher import FusedEpilogue

    for block in (0, 2048):
        with pytest.raises(BincamError, match="block size"):
            FusedEpilogue(block=block)
    before = driver.cuCtxGetCurrent()[1]
    kernel = FusedEpilogue(device=0)
    assert int(driver.cuCtxGetCurrent()[1]) == int(before)
    kernel.close()
    kernel.close()


def test_fallback_timing_records_its_events_on_the_launch_stream(monkeypatch):
    """Where graph capture fails, ``launch_time`` enqueues on its own stream: the timing events
    must be recorded on that stream (on the default stream they timed nothing)."""
    import contextlib
    import types
    from bincam.gpu import check

    recorded, launched = [], []

    class Stream:
        cuda_stream = 1234

    class Event:
        def __init__(self, enable_timing=False):
            pass

        def record(self, stream=None):
            recorded.append(stream)

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return 1.0

    class Graph:
        def __init__(self):
            raise RuntimeError("capture unsupported")

    launch_stream = Stream()
    cuda = types.SimpleNamespace(Stream=lambda: launch_stream, Event=Event, CUDAGraph=Graph,
                                 synchronize=lambda: None, graph=None,
                                 stream=lambda s: contextlib.nullcontext())
    monkeypatch.setattr(check, "torch", types.SimpleNamespace(cuda=cuda))
    kernel = types.SimpleNamespace(prepare=lambda stream, **_: lambda: launched.append(stream))
    result = check.launch_time(kernel, {}, reps=3, iters=4)
    assert result["timing"].startswith("back-to-back") and set(launched) == {1234}
    assert len(recorded) == 8 and all(s is launch_stream for s in recorded)


def test_performance_verdict_is_separate_and_gates_every_layout_and_batch():
    from bincam.gpu.check import performance_verdict

    rows = [{"layout": l, "batch": b, "bandwidth_fraction_f32": 0.7}
            for l in ("dense", "factored") for b in (1, 8, 64)]
    assert performance_verdict(rows)["ok"]
    rows[-1]["bandwidth_fraction_f32"] = 0.59
    verdict = performance_verdict(rows)
    assert not verdict["ok"] and verdict["slow"] == [{"layout": "factored", "batch": 64,
                                                      "fraction": 0.59}]
    rows[0]["bandwidth_fraction_f32"] = 0.1  # batch 1 is reported, not gated
    assert performance_verdict(rows[:-1])["missing"] == [("factored", 64)]
    rows[-1]["bandwidth_fraction_f32"] = float("nan")
    assert not performance_verdict(rows)["ok"]


def test_per_kernel_bytes_add_up_to_the_launch_roofline():
    from bincam.gpu.roofline import kernel_bytes, launch_bytes

    for layout in ("dense", "factored"):
        for b in (1, 8, 64):
            shape = (b, 40, 2048, 7, 7)
            per = kernel_bytes(layout, shape, (224, 224))
            assert sum(r["bytes"] for r in per.values()) == \
                launch_bytes(layout, shape, (224, 224))["total"]
            assert per["partials"]["bytes"] > 0 and per["finish"]["bytes"] > per["energy"]["bytes"]
