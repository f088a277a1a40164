"""Host logic of the fused kernels' launcher against a TEST DOUBLE of ``cuda.bindings.driver``
(defined here; it records calls and is not CUDA: nothing here ran on a GPU). What it checks: the
device asked for is the one whose primary context is used; that context is pushed around every
call — from any thread — and popped after, so the caller's current context is left as it was;
the block size is checked against each function's own limit; the four launches go out in order
with the geometry's grids, shared memory and one stream; workspaces are per stream and freed."""

import enum
import sys
import threading
import types

import pytest

from bincam.errors import BincamError
from bincam.gpu.geometry import launch_geometry


def driver_double(devices=2, max_threads=512, sms=8):
    d = types.ModuleType("cuda.bindings.driver")
    d.CUresult = enum.Enum("CUresult", {"CUDA_SUCCESS": 0, "CUDA_ERROR_INVALID_DEVICE": 101})
    d.CUdevice_attribute = enum.Enum("CUdevice_attribute", [
        "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR", "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR",
        "CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN",
        "CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT"])
    d.CUfunction_attribute = enum.Enum("CUfunction_attribute", [
        "CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK", "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES"])
    ok = d.CUresult.CUDA_SUCCESS
    d.log = []
    d.stacks = {}  # thread id → context stack
    d.freed, d.next = [], [100]
    attrs = {"COMPUTE_CAPABILITY_MAJOR": 9, "COMPUTE_CAPABILITY_MINOR": 0,
             "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN": 227 * 1024, "MULTIPROCESSOR_COUNT": sms}

    def stack():
        return d.stacks.setdefault(threading.get_ident(), ["caller-context"])

    def current(fn):  # calls that need a current context
        def wrapped(*args):
            d.log.append((fn.__name__, stack()[-1], *args))
            return fn(*args)
        return wrapped

    def get_device(i):
        return (ok, f"device{i}") if 0 <= i < devices else (d.CUresult.CUDA_ERROR_INVALID_DEVICE,)

    def push(ctx):
        stack().append(ctx)
        return (ok,)

    def pop():
        return (ok, stack().pop())

    def alloc(n):
        d.next[0] += 1
        return (ok, d.next[0] * 1_000_000)

    @current
    def cuModuleLoadData(image):
        return (ok, "module")

    @current
    def cuModuleGetFunction(module, name):
        return (ok, name.decode())

    @current
    def cuFuncGetAttribute(attr, fn):
        return (ok, max_threads if fn != "bincam_energy" else 1024)

    @current
    def cuFuncSetAttribute(fn, attr, value):
        return (ok,)

    @current
    def cuLaunchKernel(fn, gx, gy, gz, bx, by, bz, smem, stream, params, extra):
        return (ok,)

    @current
    def cuMemAlloc(n):
        return alloc(n)

    @current
    def cuMemFree(p):
        d.freed.append(p)
        return (ok,)

    d.__dict__.update(
        cuInit=lambda flags: (ok,), cuDeviceGet=get_device,
        cuDeviceGetAttribute=lambda a, dev: (ok, attrs[a.name.replace("CU_DEVICE_ATTRIBUTE_", "")]),
        cuDevicePrimaryCtxRetain=lambda dev: (ok, f"primary({dev})"),
        cuDevicePrimaryCtxRelease=lambda dev: d.log.append(("release", dev)) or (ok,),
        cuCtxPushCurrent=push, cuCtxPopCurrent=pop, cuCtxSynchronize=lambda: (ok,),
        cuModuleLoadData=cuModuleLoadData, cuModuleGetFunction=cuModuleGetFunction,
        cuModuleUnload=current(lambda m: (ok,)), cuFuncGetAttribute=cuFuncGetAttribute,
        cuFuncSetAttribute=cuFuncSetAttribute, cuLaunchKernel=cuLaunchKernel,
        cuMemAlloc=cuMemAlloc, cuMemFree=cuMemFree)
    return d


@pytest.fixture
def driver(monkeypatch):
    from bincam.gpu import launcher

    def install(**kw):
        d = driver_double(**kw)
        cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        cuda.bindings, bindings.driver = bindings, d
        for name, module in (("cuda", cuda), ("cuda.bindings", bindings),
                             ("cuda.bindings.driver", d)):
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(launcher, "cached_cubin", lambda arch: b"\x7fELF test double")
        return d
    return install


ARGS = dict(acts=1, grads=2, logits=3, shape=(1, 40, 2048, 7, 7), size=(224, 224),
            method="gradcam", layout="dense", masks=4, maps_u8=5, energy=6, stream=77)


def test_device_context_and_launch_order(driver):
    from bincam.gpu.launcher import FusedEpilogue

    d = driver()
    kernel = FusedEpilogue(device=1, block=256)
    assert d.stacks[threading.get_ident()] == ["caller-context"]  # left as it was
    assert all(entry[1] == "primary(device1)" for entry in d.log if entry[0] != "release")
    d.log.clear()
    worker = threading.Thread(target=lambda: kernel.launch(**ARGS))  # not the constructing thread
    worker.start(), worker.join()
    launches = [e for e in d.log if e[0] == "cuLaunchKernel"]
    g = launch_geometry("dense", ARGS["shape"], ARGS["size"], 256, sms=8, shared_limit=227 * 1024)
    assert [(e[2], e[3:6], e[6], e[9], e[10]) for e in launches] == [
        ("bincam_partials_dense", g.grid_partials, 256, g.smem_partials, 77),
        ("bincam_finish", g.grid_finish, 256, g.smem_finish, 77),
        ("bincam_energy", g.grid_energy, 256, 0, 77)]
    assert all(e[1] == "primary(device1)" for e in d.log)  # pushed in the worker thread too
    assert all(stack == ["caller-context"] for stack in d.stacks.values())
    kernel.launch(**{**ARGS, "stream": 78})  # a second stream gets its own workspace
    allocs = [e for e in d.log if e[0] == "cuMemAlloc"]
    assert len(allocs) == 2
    kernel.close(), kernel.close()
    assert len(d.freed) == 2 and ("release", "device1") in d.log


def test_block_size_is_checked_against_each_function(driver):
    from bincam.gpu.launcher import FusedEpilogue

    driver(max_threads=128)
    with pytest.raises(BincamError, match="block size 256 exceeds the 128 threads per block "
                                          "bincam_partials_dense allows"):
        FusedEpilogue(block=256)
    FusedEpilogue(block=128).close()
    for block in (0, 513):
        with pytest.raises(BincamError, match="block size must be 1..512"):
            FusedEpilogue(block=block)


def test_a_missing_device_is_an_error(driver):
    from bincam.gpu.launcher import FusedEpilogue

    driver(devices=1)
    with pytest.raises(BincamError, match="CUDA_ERROR_INVALID_DEVICE"):
        FusedEpilogue(device=1)


def test_a_missing_nvrtc_library_is_one_clear_error(monkeypatch):
    """cuda-python ships NVRTC's bindings without its library: the first call raises
    cuda.pathfinder's bare RuntimeError, which becomes one error naming the wheel to install."""
    pytest.importorskip("cuda.bindings.nvrtc")
    from cuda.bindings import nvrtc

    from bincam.gpu import launcher

    def missing():
        raise RuntimeError('Failure finding "libnvrtc.so.13 or libnvrtc.so.12": No such file')

    monkeypatch.setattr(nvrtc, "nvrtcVersion", missing)
    monkeypatch.setattr(launcher, "_nvrtc_loaded", [])
    for call in (launcher.nvrtc_version, lambda: launcher.compile_kernel("sm_90")):
        with pytest.raises(BincamError, match=r"NVRTC's library \(libnvrtc\) was not found .*"
                                              r"pip install 'nvidia-cuda-nvrtc==13\.\*'"):
            call()
