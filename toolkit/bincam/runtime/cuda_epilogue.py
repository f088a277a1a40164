"""The fused epilogue kernel (``kernels/binary_cam_epilogue.cu``) from Python, through
cuda-python only (no torch): NVRTC compilation, a per-architecture cubin cache, and launches on
device pointers — an engine's output buffers, read in place.

A cubin for the device's own architecture is preferred to PTX: PTX from an NVRTC newer than the
driver is refused, cubins keep CUDA's minor-version compatibility. Cache key: SHA-256 of the
source, the architecture and the NVRTC version; files under ``$BINCAM_CACHE`` or
``~/.cache/bincam/kernels``.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

import numpy as np

from bincam.errors import BincamError

KERNEL = "bincam_fused_epilogue"
SOURCE_NAME = "binary_cam_epilogue.cu"
METHOD_IDS = {"gradcam": 0, "hirescam": 1, "gradcam-elementwise": 2, "xgradcam": 3,
              "gradcam++": 4, "layercam": 5}
LAYOUT_IDS = {"dense": 0, "factored": 1}
MODE_IDS = {"predicted": 0, "positive": 1, "negative": 2}


def kernel_source() -> str:
    """The kernel's CUDA C source: packaged with bincam, or ``kernels/`` of a source checkout."""
    packaged = resources.files("bincam").joinpath("kernels", SOURCE_NAME)
    if packaged.is_file():
        return packaged.read_text()
    checkout = Path(__file__).resolve().parents[3] / "kernels" / SOURCE_NAME
    if checkout.is_file():
        return checkout.read_text()
    raise BincamError(f"kernel source {SOURCE_NAME} is missing from this installation")


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        raise BincamError("compiling the CUDA kernels needs cuda-python: pip install "
                          "'bincam[gpu]' (or cuda-python and nvidia-cuda-nvrtc)") from None
    return nvrtc


def _ok(nvrtc, result, prog=None, what=""):
    err, *values = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        log = ""
        if prog is not None:
            _, size = nvrtc.nvrtcGetProgramLogSize(prog)
            buf = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, buf)
            log = buf.decode(errors="replace").strip()
        raise BincamError(f"NVRTC {what} failed ({err.name}){': ' + log if log else ''}")
    return values[0] if len(values) == 1 else values


def nvrtc_version() -> tuple[int, int]:
    nvrtc = _nvrtc()
    return tuple(_ok(nvrtc, nvrtc.nvrtcVersion(), what="version"))


def compile_kernel(arch: str, source: str | None = None) -> bytes:
    """Compile to a cubin (``arch`` = ``sm_XY``) or to PTX (``arch`` = ``compute_XY``)."""
    nvrtc = _nvrtc()
    source = source if source is not None else kernel_source()
    prog = _ok(nvrtc, nvrtc.nvrtcCreateProgram(source.encode(), SOURCE_NAME.encode(), 0, [], []),
               what="program creation")
    try:
        options = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
        _ok(nvrtc, nvrtc.nvrtcCompileProgram(prog, len(options), options), prog,
            f"compilation for {arch}")
        if arch.startswith("compute_"):
            size = _ok(nvrtc, nvrtc.nvrtcGetPTXSize(prog), what="PTX size")
            out = b" " * size
            _ok(nvrtc, nvrtc.nvrtcGetPTX(prog, out), what="PTX")
        else:
            size = _ok(nvrtc, nvrtc.nvrtcGetCUBINSize(prog), what="cubin size")
            out = b" " * size
            _ok(nvrtc, nvrtc.nvrtcGetCUBIN(prog, out), what="cubin")
        return out
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def cache_dir() -> Path:
    return Path(os.environ.get("BINCAM_CACHE", Path.home() / ".cache" / "bincam")) / "kernels"


def cached_cubin(arch: str) -> bytes:
    """The cubin for ``arch``, compiled once per source, architecture and NVRTC version."""
    source = kernel_source()
    key = hashlib.sha256(f"{source}\0{arch}\0{nvrtc_version()}".encode()).hexdigest()[:24]
    path = cache_dir() / f"{KERNEL}-{arch}-{key}.cubin"
    if path.is_file():
        return path.read_bytes()
    cubin = compile_kernel(arch, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(cubin)
    os.replace(tmp, path)
    return cubin


def shared_bytes(channels: int, cells: int, block: int) -> int:
    """Dynamic shared memory of one block: floats alpha[C], map[h·w], partial[block], scratch[32]."""
    return 4 * (channels + cells + block + 32)


def kernel_arguments(*, acts: int, grads: int, logits: int, shape, size, method: str,
                     layout: str, mode: str, mask_positive: bool, masks: int = 0, raw: int = 0,
                     maps_f32: int = 0, maps_f16: int = 0, maps_u8: int = 0,
                     energy: int = 0) -> list:
    """The kernel's parameters in signature order: pointers as ``uint64``, ints as ``int32``."""
    _, k, c, h, w = shape
    if method not in METHOD_IDS or layout not in LAYOUT_IDS or mode not in MODE_IDS:
        raise BincamError(f"the fused kernel takes method {'/'.join(METHOD_IDS)}, layout "
                          f"{'/'.join(LAYOUT_IDS)}, mode {'/'.join(MODE_IDS)}")
    pointer, integer = np.uint64, np.int32
    return [pointer(acts), pointer(grads), pointer(logits), pointer(masks),
            *(integer(v) for v in (k, c, h, w, size[0], size[1], METHOD_IDS[method],
                                   LAYOUT_IDS[layout], MODE_IDS[mode], int(mask_positive))),
            pointer(raw), pointer(maps_f32), pointer(maps_f16), pointer(maps_u8),
            pointer(energy)]


class FusedEpilogue:
    """The compiled kernel on one device. ``launch`` takes device pointers (ints; 0 = none)."""

    def __init__(self, device: int = 0, block: int = 256):
        try:
            from cuda.bindings import driver
        except ImportError:
            raise BincamError("the fused epilogue needs cuda-python: pip install 'bincam[gpu]'") \
                from None
        if block % 32 or not 32 <= block <= 1024:
            raise BincamError("the block size must be a multiple of 32 in [32, 1024]")
        self.driver, self.block = driver, block
        self._check(driver.cuInit(0))
        dev = self._check(driver.cuDeviceGet(device))
        attr = driver.CUdevice_attribute
        major = self._check(driver.cuDeviceGetAttribute(
            attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev))
        minor = self._check(driver.cuDeviceGetAttribute(
            attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev))
        self.arch = f"sm_{major}{minor}"
        self.context = self._check(driver.cuDevicePrimaryCtxRetain(dev))
        self._check(driver.cuCtxSetCurrent(self.context))
        self.module = self._check(driver.cuModuleLoadData(cached_cubin(self.arch)))
        self.function = self._check(driver.cuModuleGetFunction(self.module, KERNEL.encode()))
        self.max_shared = self._check(driver.cuDeviceGetAttribute(
            attr.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev))

    def _check(self, result):
        err, *values = result
        if err != self.driver.CUresult.CUDA_SUCCESS:
            raise BincamError(f"CUDA driver call failed: {err.name}")
        return values[0] if len(values) == 1 else (values or None)

    def launch(self, *, acts: int, grads: int, logits: int, shape: tuple[int, int, int, int, int],
               size: tuple[int, int], method: str = "gradcam", layout: str = "dense",
               mode: str = "predicted", mask_positive: bool = True, masks: int = 0, raw: int = 0,
               maps_f32: int = 0, maps_f16: int = 0, maps_u8: int = 0, energy: int = 0,
               stream: int = 0) -> None:
        """Enqueue the kernel on ``stream`` for float32 ``acts [B,C,h,w]``, ``grads``
        (``[B,K,C,h,w]`` dense or ``[K,C]`` factored) and ``logits [B,K]``; ``masks`` is uint8
        ``[K,H,W]``; outputs ``raw [B,K,h,w]``, maps ``[B,K,H,W]`` (float32, binary16 bits,
        uint8) and ``energy [B,K,2]``."""
        b, k, c, h, w = shape
        values = kernel_arguments(acts=acts, grads=grads, logits=logits, shape=shape, size=size,
                                  method=method, layout=layout, mode=mode,
                                  mask_positive=mask_positive, masks=masks, raw=raw,
                                  maps_f32=maps_f32, maps_f16=maps_f16, maps_u8=maps_u8,
                                  energy=energy)
        smem = shared_bytes(c, h * w, self.block)
        if smem > self.max_shared:
            raise BincamError(f"{c} channels × {h}×{w} cells need {smem} bytes of shared memory; "
                              f"this GPU allows {self.max_shared}")
        if smem > 48 * 1024:
            attr = self.driver.CUfunction_attribute
            self._check(self.driver.cuFuncSetAttribute(
                self.function, attr.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem))
        holders = [np.array([v], dtype=type(v)) for v in values]
        params = np.array([holder.ctypes.data for holder in holders], dtype=np.uint64)
        self._check(self.driver.cuLaunchKernel(self.function, b * k, 1, 1, self.block, 1, 1, smem,
                                               stream, params.ctypes.data, 0))
