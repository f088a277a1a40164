"""The fused CUDA epilogue: its NumPy reference equals the torch CAM path, the kernel compiles
for sm_80 and sm_90 (NVRTC, and nvcc where present), and on a GPU it equals the reference."""

import importlib.util
import shutil
import subprocess

import numpy as np
import pytest
import torch

from bincam.attributes import ATTRIBUTES, attribute_masks
from bincam.cam.epilogue import epilogue as torch_epilogue
from bincam.cam.methods import METHODS, FactoredGrad
from bincam.heatmap import MaskEnergy
from bincam.runtime.cam_np import signs
from bincam.runtime.fused_reference import fused_epilogue_reference

HAS_NVRTC = importlib.util.find_spec("cuda") is not None and \
    importlib.util.find_spec("cuda.bindings") is not None


def _inputs(seed, b=3, k=5, c=16, h=7, w=7):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(b, c, h, w))
    logits = rng.normal(size=(b, k))
    logits[0, 0] = 0.0  # z = 0: an empty map in predicted mode
    return a, rng.normal(size=(b, k, c, h, w)) / 49, rng.normal(size=(k, c)) / 49, logits


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("layout", ["dense", "factored"])
@pytest.mark.parametrize("mode", ["predicted", "positive", "negative"])
def test_reference_equals_the_torch_path(method, layout, mode):
    a, dense, weight, logits = _inputs(3)
    attrs = ATTRIBUTES[:5]
    masks = attribute_masks(attrs, 112)
    ref = fused_epilogue_reference(a, dense if layout == "dense" else weight, logits, (112, 112),
                                   method, layout, mode, True, masks)
    s = torch.from_numpy(signs(logits, mode))
    if layout == "dense":
        g = s[:, :, None, None, None] * torch.from_numpy(dense)
    else:
        g = FactoredGrad(s, torch.from_numpy(weight), torch.from_numpy((a > 0).astype(float)))
    raw = METHODS[method](torch.from_numpy(a), g)
    assert np.abs(ref["raw"] - raw.numpy()).max() < 1e-12
    maps = torch_epilogue(raw, 112, dtype=torch.float64).numpy()
    assert np.abs(ref["maps"] - maps).max() < 1e-12
    assert np.array_equal(ref["maps_u8"], np.rint(maps * 255).astype(np.uint8))
    pe = MaskEnergy(masks, (7, 7))(raw.numpy())
    assert np.abs(ref["pe"] - pe).max() < 1e-10
    if mode == "predicted":
        assert ref["maps"][0, 0].max() == 0 and ref["pe"][0, 0] == 0


def test_reference_upsamples_other_shapes():
    a, dense, _, logits = _inputs(4, b=1, k=2, c=4, h=4, w=6)
    ref = fused_epilogue_reference(a, dense, logits, (50, 75))
    s = torch.from_numpy(signs(logits, "predicted"))
    raw = METHODS["gradcam"](torch.from_numpy(a), s[:, :, None, None, None] * torch.from_numpy(dense))
    maps = torch_epilogue(raw, (50, 75), dtype=torch.float64).numpy()
    assert ref["maps"].shape == (1, 2, 50, 75) and np.abs(ref["maps"] - maps).max() < 1e-12
    with pytest.raises(ValueError, match="gradcam, hirescam"):
        fused_epilogue_reference(a, dense, logits, (8, 8), method="scorecam")


def test_launch_arguments_match_the_kernel_signature():
    """The launcher packs one argument per kernel parameter, pointers as 64-bit, ints as int32,
    in the order of the signature in the .cu file (a mismatch would corrupt every launch)."""
    import re

    from bincam.errors import BincamError
    from bincam.runtime.cuda_epilogue import KERNEL, kernel_arguments, kernel_source

    code = re.sub(r"//[^\n]*", "", kernel_source())
    head = re.search(KERNEL + r"\((.*?)\)\s*\{", code, re.S).group(1)
    params = [p.strip() for p in head.split(",")]
    kinds = ["pointer" if "*" in p else p.split()[0] for p in params]
    names = [re.split(r"[\s*]+", p)[-1] for p in params]
    args = kernel_arguments(acts=1, grads=2, logits=3, shape=(2, 40, 512, 7, 7), size=(224, 224),
                            method="hirescam", layout="factored", mode="negative",
                            mask_positive=False, masks=4, raw=5, maps_f32=6, maps_f16=7,
                            maps_u8=8, energy=9)
    assert len(args) == len(kinds) == 19
    for kind, arg in zip(kinds, args):
        assert (kind, arg.dtype) in (("pointer", np.uint64), ("int", np.int32)), (kind, arg)
    values = dict(zip(names, (int(a) for a in args)))
    assert values == {"acts": 1, "grads": 2, "logits": 3, "masks": 4, "K": 40, "C": 512, "h": 7,
                      "w": 7, "H": 224, "W": 224, "method": 1, "layout": 1, "mode": 2,
                      "mask_positive": 0, "raw_out": 5, "maps_f32": 6, "maps_f16": 7,
                      "maps_u8": 8, "energy": 9}
    with pytest.raises(BincamError, match="the fused kernel takes method gradcam/hirescam"):
        kernel_arguments(acts=1, grads=2, logits=3, shape=(1, 1, 1, 1, 1), size=(1, 1),
                         method="scorecam", layout="dense", mode="predicted", mask_positive=True)


@pytest.mark.skipif(not HAS_NVRTC, reason="cuda-python is not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90", "compute_80"])
def test_kernel_compiles_with_nvrtc(arch, tmp_path, monkeypatch):
    from bincam.runtime import cuda_epilogue

    out = cuda_epilogue.compile_kernel(arch)
    if arch.startswith("sm_"):
        assert out[:4] == b"\x7fELF" and len(out) > 1000  # a cubin is an ELF image
    else:
        assert b".entry bincam_fused_epilogue" in out and f".target {arch.replace('compute', 'sm')}" \
            .encode() in out
    monkeypatch.setenv("BINCAM_CACHE", str(tmp_path))
    if arch.startswith("sm_"):
        first = cuda_epilogue.cached_cubin(arch)
        files = list((tmp_path / "kernels").iterdir())
        assert len(files) == 1 and cuda_epilogue.cached_cubin(arch) == first


@pytest.mark.skipif(not HAS_NVRTC, reason="cuda-python is not installed")
def test_compile_errors_are_reported_with_the_log():
    from bincam.errors import BincamError
    from bincam.runtime import cuda_epilogue

    with pytest.raises(BincamError, match="compilation for sm_80 failed.*undefined"):
        cuda_epilogue.compile_kernel("sm_80", "extern \"C\" __global__ void f() { g(); }")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_kernel_compiles_with_nvcc(arch, tmp_path):
    from bincam.runtime.cuda_epilogue import kernel_source

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


@pytest.mark.skipif(not _has_gpu(), reason="no CUDA GPU")
@pytest.mark.parametrize("layout", ["dense", "factored"])
def test_kernel_on_gpu_equals_the_reference(layout):
    from bincam.gpu_check import run_fused_case

    err = run_fused_case(layout=layout, method="gradcam", seed=11)
    assert err["maps max abs"] <= 1e-5 and err["PE max abs"] <= 1e-5 and err["raw rel"] <= 1e-5
