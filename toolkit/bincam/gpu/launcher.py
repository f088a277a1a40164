"""The fused epilogue kernel (``kernels/binary_cam_epilogue.cu``) from Python, through
cuda-python only (no torch): NVRTC compilation, a per-architecture cubin cache, and launches on
device pointers — an engine's output buffers, read in place.

A cubin for the device's own architecture is preferred to PTX: PTX from an NVRTC newer than the
driver is refused, cubins keep CUDA's minor-version compatibility. Cache key: SHA-256 of the
source, the architecture and the NVRTC version; files under ``$BINCAM_CACHE`` or
``~/.cache/bincam/kernels``. The kernel's method and mode numbers are the core's
(``core.methods.METHODS[name].id``, ``core.modes.MODES[name]``).
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import numpy as np

from bincam.core.methods import METHODS
from bincam.core.modes import MODES
from bincam.errors import BincamError
from bincam.files import write_atomic

KERNEL = "bincam_fused_epilogue"
SOURCE_NAME = "binary_cam_epilogue.cu"
LAYOUT_IDS = {"dense": 0, "factored": 1}


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
    write_atomic(path, cubin)
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
    if method not in METHODS or layout not in LAYOUT_IDS or mode not in MODES:
        raise BincamError(f"the fused kernel takes method {'/'.join(METHODS)}, layout "
                          f"{'/'.join(LAYOUT_IDS)}, mode {'/'.join(MODES)}")
    pointer, integer = np.uint64, np.int32
    return [pointer(acts), pointer(grads), pointer(logits), pointer(masks),
            *(integer(v) for v in (k, c, h, w, size[0], size[1], METHODS[method].id,
                                   LAYOUT_IDS[layout], MODES[mode], int(mask_positive))),
            pointer(raw), pointer(maps_f32), pointer(maps_f16), pointer(maps_u8),
            pointer(energy)]


class Launch:
    """One launch with its arguments packed once; each call enqueues it again (for timing)."""

    def __init__(self, kernel: "FusedEpilogue", values: list, blocks: int, smem: int,
                 stream: int):
        self.kernel, self.blocks, self.smem, self.stream = kernel, blocks, smem, stream
        self._holders = [np.array([v], dtype=type(v)) for v in values]
        self._params = np.array([h.ctypes.data for h in self._holders], dtype=np.uint64)

    def __call__(self) -> None:
        k = self.kernel
        with k.current():
            k._check(k.driver.cuLaunchKernel(k.function, self.blocks, 1, 1, k.block, 1, 1,
                                             self.smem, self.stream, self._params.ctypes.data, 0))


class FusedEpilogue:
    """The compiled kernel on device ``device``, in that device's primary context (the one the
    CUDA runtime, TensorRT and torch use), made current only around each call so the caller's
    current context is left as it was. ``launch`` takes device pointers (ints; 0 = none)."""

    def __init__(self, device: int = 0, block: int = 256):
        try:
            from cuda.bindings import driver
        except ImportError:
            raise BincamError("the fused epilogue needs cuda-python: pip install 'bincam[gpu]'") \
                from None
        if block < 32 or block % 32:
            raise BincamError(f"the block size must be a positive multiple of 32, got {block}")
        self.driver, self.block, self.module, self.context = driver, block, None, None
        self._check(driver.cuInit(0))
        self.device = self._check(driver.cuDeviceGet(device))
        attr = driver.CUdevice_attribute
        major, minor, self.max_shared = (
            self._check(driver.cuDeviceGetAttribute(getattr(attr, f"CU_DEVICE_ATTRIBUTE_{a}"),
                                                    self.device))
            for a in ("COMPUTE_CAPABILITY_MAJOR", "COMPUTE_CAPABILITY_MINOR",
                      "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN"))
        self.arch = f"sm_{major}{minor}"
        self.context = self._check(driver.cuDevicePrimaryCtxRetain(self.device))
        try:
            with self.current():
                self.module = self._check(driver.cuModuleLoadData(cached_cubin(self.arch)))
                self.function = self._check(driver.cuModuleGetFunction(self.module,
                                                                       KERNEL.encode()))
                max_threads = self._check(driver.cuFuncGetAttribute(
                    driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK,
                    self.function))
            if block > max_threads:
                raise BincamError(f"block size {block} exceeds the {max_threads} threads per "
                                  f"block the kernel allows on {self.arch}")
        except BaseException:
            self.close()
            raise
        self._smem_limit = 48 * 1024  # dynamic shared memory allowed without opting in

    def _check(self, result):
        err, *values = result
        if err != self.driver.CUresult.CUDA_SUCCESS:
            raise BincamError(f"CUDA driver call failed: {err.name}")
        return values[0] if len(values) == 1 else (values or None)

    @contextmanager
    def current(self):
        """This device's context current in the calling thread, the previous one restored."""
        self._check(self.driver.cuCtxPushCurrent(self.context))
        try:
            yield
        finally:
            self._check(self.driver.cuCtxPopCurrent())

    def prepare(self, *, acts: int, grads: int, logits: int,
                shape: tuple[int, int, int, int, int], size: tuple[int, int],
                method: str = "gradcam", layout: str = "dense", mode: str = "predicted",
                mask_positive: bool = True, masks: int = 0, raw: int = 0, maps_f32: int = 0,
                maps_f16: int = 0, maps_u8: int = 0, energy: int = 0, stream: int = 0) -> Launch:
        """The launch of ``launch``'s arguments, packed, checked and ready to enqueue."""
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
        if smem > self._smem_limit:
            attr = self.driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            with self.current():
                self._check(self.driver.cuFuncSetAttribute(self.function, attr, smem))
            self._smem_limit = smem
        return Launch(self, values, b * k, smem, stream)

    def launch(self, **arguments) -> None:
        """Enqueue the kernel on ``stream`` for float32 ``acts [B,C,h,w]``, ``grads``
        (``[B,K,C,h,w]`` dense or ``[K,C]`` factored) and ``logits [B,K]``; ``masks`` is uint8
        ``[K,H,W]``; outputs ``raw [B,K,h,w]``, maps ``[B,K,H,W]`` (float32, binary16 bits,
        uint8) and ``energy [B,K,2]``. Arguments as for ``prepare``."""
        self.prepare(**arguments)()

    def close(self) -> None:
        """Unload the module and release the primary context; idempotent."""
        if self.module is not None:
            with self.current():
                self.driver.cuModuleUnload(self.module)
            self.module = None
        if self.context is not None:
            self.driver.cuDevicePrimaryCtxRelease(self.device)
            self.context = None
