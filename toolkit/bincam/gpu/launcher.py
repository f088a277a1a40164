"""The fused epilogue kernels (``kernels/binary_cam_epilogue.cu``) from Python, through
cuda-python only (no torch): NVRTC compilation, a per-architecture cubin cache, the launch
geometry, and launches on device pointers — an engine's output buffers, read in place.

One ``launch`` enqueues four kernels on one stream: partial sums over channel splits (dense or
factored), the finishing pass over row tiles of the maps, the energies' sum (see the .cu file).
``launch_geometry`` picks the splits ``S``, channel tile, attribute group ``kc`` and row tiles
``T`` so that about two blocks per SM are in flight even at batch 1; it is a pure function, so
the host emulator (``gpu.emulation``) runs the kernels with the very geometry a GPU gets.

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

from bincam.errors import BincamError
from bincam.files import write_atomic
from bincam.gpu.geometry import (MAX_THREADS, Geometry, check_choices, kernel_arguments,
                                 launch_geometry)

KERNELS = ("bincam_partials_dense", "bincam_partials_factored", "bincam_finish",
           "bincam_energy")
SOURCE_NAME = "binary_cam_epilogue.cu"


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
    """``cuda.bindings.nvrtc`` with NVRTC's own library loaded: cuda-python ships the bindings
    only, and a missing ``libnvrtc`` surfaces at the first call as a bare ``RuntimeError``."""
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        raise BincamError("compiling the CUDA kernels needs cuda-python: pip install "
                          "'bincam[gpu]' (or cuda-python and nvidia-cuda-nvrtc)") from None
    _load_nvrtc_library(nvrtc)
    return nvrtc


def nvrtc_package() -> str:
    """The pip requirement of NVRTC's library matching the installed cuda-python's major."""
    from importlib import metadata

    try:
        major = int(metadata.version("cuda-bindings").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        major = 13
    return f"nvidia-cuda-nvrtc=={major}.*" if major >= 13 else f"nvidia-cuda-nvrtc-cu{major}"


_nvrtc_loaded = []  # [True] once libnvrtc answered


def _load_nvrtc_library(nvrtc) -> None:
    if _nvrtc_loaded:
        return
    try:
        nvrtc.nvrtcVersion()
    except RuntimeError as exc:  # cuda.pathfinder's DynamicLibNotFoundError, or a dlopen error
        raise BincamError(
            f"NVRTC's library (libnvrtc) was not found ({str(exc).splitlines()[0][:120]}); "
            f"cuda-python does not ship it: pip install '{nvrtc_package()}' (the CUDA version "
            "of cuda-python), or 'bincam[gpu]'") from None
    _nvrtc_loaded.append(True)


def _ok(nvrtc, result, prog=None, what=""):
    err, *values = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        log = _program_log(nvrtc, prog) if prog is not None else ""
        raise BincamError(f"NVRTC {what} failed ({err.name}){': ' + log if log else ''}")
    return values[0] if len(values) == 1 else values


def nvrtc_version() -> tuple[int, int]:
    nvrtc = _nvrtc()
    return tuple(_ok(nvrtc, nvrtc.nvrtcVersion(), what="version"))


def _program_log(nvrtc, prog) -> str:
    _, size = nvrtc.nvrtcGetProgramLogSize(prog)
    buf = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, buf)
    return buf.decode(errors="replace").rstrip("\0").strip()


def compile_kernel(arch: str, source: str | None = None, ptxas_verbose: bool = False,
                   log: list | None = None) -> bytes:
    """Compile to a cubin (``arch`` = ``sm_XY``) or to PTX (``arch`` = ``compute_XY``);
    ``ptxas_verbose`` appends ptxas's register and spill report to ``log``."""
    nvrtc = _nvrtc()
    source = source if source is not None else kernel_source()
    prog = _ok(nvrtc, nvrtc.nvrtcCreateProgram(source.encode(), SOURCE_NAME.encode(), 0, [], []),
               what="program creation")
    try:
        options = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
        if ptxas_verbose:
            options.append(b"--ptxas-options=-v")
        _ok(nvrtc, nvrtc.nvrtcCompileProgram(prog, len(options), options), prog,
            f"compilation for {arch}")
        if log is not None:
            log.append(_program_log(nvrtc, prog))
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
    path = cache_dir() / f"binary_cam_epilogue-{arch}-{key}.cubin"
    if path.is_file():
        return path.read_bytes()
    cubin = compile_kernel(arch, source)
    write_atomic(path, cubin)
    return cubin


class Launch:
    """One launch — the four kernels' arguments packed once; each call enqueues them again
    (outside any timed region: ``gpu.check`` times only the calls)."""

    def __init__(self, kernel: "FusedEpilogue", geometry: Geometry, arguments: dict[str, list],
                 stream: int):
        self.kernel, self.geometry, self.stream = kernel, geometry, stream
        grids = {"bincam_partials_dense": geometry.grid_partials,
                 "bincam_partials_factored": geometry.grid_partials,
                 "bincam_finish": geometry.grid_finish, "bincam_energy": geometry.grid_energy}
        smem = {"bincam_finish": geometry.smem_finish, "bincam_energy": 0}
        self._holders, self.steps = [], []
        for name, values in arguments.items():
            holders = [np.array([v], dtype=type(v)) for v in values]
            params = np.array([h.ctypes.data for h in holders], dtype=np.uint64)
            self._holders.append((holders, params))
            self.steps.append((name, grids[name], smem.get(name, geometry.smem_partials),
                               params.ctypes.data))

    def __call__(self) -> None:
        k = self.kernel
        with k.current():
            for name, grid, smem, params in self.steps:
                k._check(k.driver.cuLaunchKernel(k.functions[name], *grid, self.geometry.block,
                                                 1, 1, smem, self.stream, params, 0))


class FusedEpilogue:
    """The compiled kernels on device ``device``, in that device's primary context (the one the
    CUDA runtime, TensorRT and torch use), pushed around each call — from any thread — and
    popped after, so the caller's current context is left as it was. ``launch`` takes device
    pointers (ints; 0 = none). A workspace per stream holds the partial sums."""

    def __init__(self, device: int = 0, block: int = 256):
        try:
            from cuda.bindings import driver
        except ImportError:
            raise BincamError("the fused epilogue needs cuda-python: pip install 'bincam[gpu]'") \
                from None
        if not 1 <= block <= MAX_THREADS:
            raise BincamError(f"the block size must be 1..{MAX_THREADS}, got {block}")
        self.driver, self.block, self.module, self.context = driver, block, None, None
        self.device_index, self.functions = device, {}
        self._workspaces: dict[int, tuple[int, int]] = {}  # stream → (pointer, bytes)
        self._retired: list[int] = []
        self._check(driver.cuInit(0))
        self.device = self._check(driver.cuDeviceGet(device))
        attr = driver.CUdevice_attribute
        major, minor, self.max_shared, self.sms = (
            self._check(driver.cuDeviceGetAttribute(getattr(attr, f"CU_DEVICE_ATTRIBUTE_{a}"),
                                                    self.device))
            for a in ("COMPUTE_CAPABILITY_MAJOR", "COMPUTE_CAPABILITY_MINOR",
                      "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN", "MULTIPROCESSOR_COUNT"))
        self.arch = f"sm_{major}{minor}"
        self.context = self._check(driver.cuDevicePrimaryCtxRetain(self.device))
        try:
            with self.current():
                self.module = self._check(driver.cuModuleLoadData(cached_cubin(self.arch)))
                for name in KERNELS:
                    self.functions[name] = self._check(
                        driver.cuModuleGetFunction(self.module, name.encode()))
                    max_threads = self._check(driver.cuFuncGetAttribute(
                        driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK,
                        self.functions[name]))
                    if block > max_threads:
                        raise BincamError(f"block size {block} exceeds the {max_threads} threads "
                                          f"per block {name} allows on {self.arch}")
        except BaseException:
            self.close()
            raise
        self._smem_limit = {name: 48 * 1024 for name in KERNELS}  # allowed without opting in

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

    def _opt_in(self, name: str, smem: int) -> None:
        if smem > self._smem_limit[name]:
            attr = self.driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            self._check(self.driver.cuFuncSetAttribute(self.functions[name], attr, smem))
            self._smem_limit[name] = smem

    def _workspace(self, stream: int, nbytes: int) -> int:
        """This stream's workspace of at least ``nbytes``; a smaller one is retired (freed at
        ``close``: launches prepared earlier may still use it)."""
        ptr, size = self._workspaces.get(stream, (0, 0))
        if size < nbytes:
            if ptr:
                self._retired.append(ptr)
            size = max(nbytes, 2 * size)
            ptr = int(self._check(self.driver.cuMemAlloc(size)))
            self._workspaces[stream] = (ptr, size)
        return ptr

    def prepare(self, *, acts: int, grads: int, logits: int,
                shape: tuple[int, int, int, int, int], size: tuple[int, int],
                method: str = "gradcam", layout: str = "dense", mode: str = "predicted",
                mask_positive: bool = True, masks: int = 0, raw: int = 0, maps_f32: int = 0,
                maps_f16: int = 0, maps_u8: int = 0, energy: int = 0, stream: int = 0,
                half_inputs: bool = False) -> Launch:
        """The launch of ``launch``'s arguments, packed, checked and ready to enqueue."""
        check_choices(method, layout, mode)
        b, k, c, h, w = shape
        geometry = launch_geometry(layout, shape, size, self.block, self.sms, self.max_shared)
        partial_floats, energy_floats = geometry.workspace_floats(b * k, h * w)
        with self.current():
            base = self._workspace(int(stream), 4 * (partial_floats + energy_floats))
            for name in KERNELS:
                self._opt_in(name, geometry.smem_finish if name == "bincam_finish"
                             else geometry.smem_partials)
        arguments = kernel_arguments(
            geometry, acts=acts, grads=grads, logits=logits, shape=shape, size=size,
            method=method, layout=layout, mode=mode, mask_positive=mask_positive, partial=base,
            tile_energy=base + 4 * partial_floats, half_inputs=half_inputs, masks=masks, raw=raw,
            maps_f32=maps_f32, maps_f16=maps_f16, maps_u8=maps_u8, energy=energy)
        return Launch(self, geometry, arguments, int(stream))

    def launch(self, **arguments) -> None:
        """Enqueue the kernels on ``stream`` for ``acts [B,C,h,w]``, ``grads`` (``[B,K,C,h,w]``
        dense or ``[K,C]`` factored, float32) and ``logits [B,K]`` (float32); acts and dense
        grads are float32, or binary16 with ``half_inputs``; ``masks`` is uint8
        ``[K,H,W]``; outputs ``raw [B,K,h,w]``, maps ``[B,K,H,W]`` (float32, binary16 bits,
        uint8) and ``energy [B,K,2]``. Arguments as for ``prepare``."""
        self.prepare(**arguments)()

    def close(self) -> None:
        """Free the workspaces, unload the module, release the primary context; idempotent."""
        if self.context is not None:
            with self.current():
                if self._workspaces or self._retired:
                    self.driver.cuCtxSynchronize()
                for ptr in [p for p, _ in self._workspaces.values()] + self._retired:
                    self.driver.cuMemFree(ptr)
                self._workspaces.clear(), self._retired.clear()
                if self.module is not None:
                    self.driver.cuModuleUnload(self.module)
                    self.module = None
            self.driver.cuDevicePrimaryCtxRelease(self.device)
            self.context = None
