"""GPU checks of the fused epilogue kernel (used by ``benchmarks/gpu_check.py`` and the GPU
tests): the kernel on fresh random inputs against the NumPy float64 reference and the torch CUDA
path (the core's array-API methods on torch tensors, then ``cam.epilogue``), its time against the
memory-bandwidth floor of the bytes it must move, and the time of the torch CUDA path. Needs a
CUDA GPU, torch with CUDA and cuda-python (the functions take any torch device, so the torch path
also runs on the CPU)."""

from __future__ import annotations

import numpy as np
import torch

from bincam.attributes import ATTRIBUTES, attribute_masks
from bincam.cam.epilogue import epilogue as torch_epilogue
from bincam.core.methods import Factored, raw_maps
from bincam.gpu.launcher import FusedEpilogue
from bincam.gpu.reference import fused_epilogue_reference
from bincam.gpu.roofline import launch_bytes


def case_inputs(layout: str, method: str, seed: int, b: int, k: int, c: int, h: int, size: int,
                device: str = "cuda") -> dict:
    """Random float32 inputs (signed activations, as a pre-ReLU tap gives) and the masks of the
    first ``k`` attributes. XGrad-CAM divides by ``Σ_hw A_c``, which signed activations bring
    near 0 for some channels: the kernel sums channels in double, so a float32 sum's
    cancellation (relative error up to 2e-3 at C = 2048) does not reach the map."""
    g = torch.Generator(device=device).manual_seed(seed)
    rand = {"device": device, "generator": g}
    acts = torch.randn(b, c, h, h, **rand)
    grads = (torch.randn(b, k, c, h, h, **rand) if layout == "dense"
             else torch.randn(k, c, **rand)) / (h * h)
    masks = torch.from_numpy(attribute_masks(ATTRIBUTES[:k], size).astype(np.uint8)).to(device)
    return {"acts": acts, "grads": grads, "logits": torch.randn(b, k, **rand), "masks": masks}


def launch_fused(kernel: FusedEpilogue, x: dict, layout: str, method: str, size: int) -> dict:
    """Run the kernels once into poisoned outputs; returns them (synchronised). float16
    ``acts`` (and dense ``grads``) are passed as binary16 inputs."""
    b, c, h, w = x["acts"].shape
    k = x["logits"].shape[1]
    out = {"raw": torch.full((b, k, h, w), float("nan"), device="cuda"),
           "maps": torch.full((b, k, size, size), float("nan"), device="cuda"),
           "maps_f16": torch.full((b, k, size, size), -1, dtype=torch.int16, device="cuda"),
           "maps_u8": torch.full((b, k, size, size), 77, dtype=torch.uint8, device="cuda"),
           "energy": torch.full((b, k, 2), float("nan"), device="cuda")}
    kernel.launch(acts=x["acts"].data_ptr(), grads=x["grads"].data_ptr(),
                  logits=x["logits"].data_ptr(), shape=(b, k, c, h, w), size=(size, size),
                  method=method, layout=layout, masks=x["masks"].data_ptr(),
                  raw=out["raw"].data_ptr(), maps_f32=out["maps"].data_ptr(),
                  maps_f16=out["maps_f16"].data_ptr(), maps_u8=out["maps_u8"].data_ptr(),
                  energy=out["energy"].data_ptr(), stream=torch.cuda.current_stream().cuda_stream,
                  half_inputs=x["acts"].dtype == torch.float16)
    torch.cuda.synchronize()
    return out


def torch_cuda_path(x: dict, layout: str, method: str, size: int) -> dict:
    """bincam's torch path on ``x``'s device (predicted mode): the core's methods on float64
    tensors, the torch epilogue (upsampling in float32), full PE ``Σ_mask F / Σ F``."""
    a = x["acts"].double()
    s = torch.sign(x["logits"]).double()
    if layout == "dense":
        g = s[:, :, None, None, None] * x["grads"].double()
    else:
        g = Factored(s, x["grads"].double(), (a > 0).double())
    raw = raw_maps(method, a, g)
    maps = torch_epilogue(raw, size)
    m = x["masks"].to(maps.dtype)
    total = maps.sum((2, 3))
    pe = torch.where(total > 0, (maps * m).sum((2, 3)) / total.clamp_min(1e-30), 0)
    return {"raw": raw, "maps": maps, "pe": pe}


LIMITS = {"raw rel": 1e-5, "maps max abs": 1e-5, "PE max abs": 1e-5, "uint8 maps max diff": 1,
          "fp16 maps max abs": 1e-3, "non-finite outputs": 0}  # what a correct kernel meets


def energy_pe(energy) -> np.ndarray:
    """PE from the kernel's energies ``[..., (inside, total)]``: inside / total, 0 where the
    map's total is 0 (as the reference)."""
    energy = np.asarray(energy, dtype=np.float64)
    total = energy[..., 1]
    return np.where(total > 0, energy[..., 0] / np.where(total > 0, total, 1), 0.0)


def reference_errors(got: dict, x: dict, layout: str, method: str, size: int) -> dict:
    """Errors of kernel outputs ``got`` (NumPy ``raw``, ``maps``, ``maps_f16`` bits,
    ``maps_u8``, ``energy``) against the float64 reference on inputs ``x`` (NumPy float32;
    predicted mode, masked factored gradients), under the names of ``LIMITS``."""
    ref = fused_epilogue_reference(x["acts"], x["grads"], x["logits"], (size, size), method,
                                   layout, "predicted", True, x["masks"])
    pe = energy_pe(got["energy"])
    raw = np.asarray(got["raw"], dtype=np.float64)
    maps = np.asarray(got["maps"], dtype=np.float64)
    f16 = np.asarray(got["maps_f16"]).view(np.float16).astype(np.float64)
    return {
        "raw rel": float(np.linalg.norm(raw - ref["raw"]) / np.linalg.norm(ref["raw"])),
        "maps max abs": float(np.abs(maps - ref["maps"]).max()),
        "fp16 maps max abs": float(np.abs(f16 - ref["maps"]).max()),
        "uint8 maps max diff": int(np.abs(np.asarray(got["maps_u8"]).astype(int)
                                          - ref["maps_u8"].astype(int)).max()),
        "PE max abs": float(np.abs(pe - ref["pe"]).max()),
        "non-finite outputs": int(sum((~np.isfinite(np.asarray(got[n], dtype=np.float64))).sum()
                                      for n in ("raw", "maps", "energy"))),
    }


def run_fused_case(layout: str = "dense", method: str = "gradcam", seed: int = 0, b: int = 8,
                   k: int = 40, c: int = 2048, h: int = 7, size: int = 224,
                   kernel: FusedEpilogue | None = None, half_inputs: bool = False) -> dict:
    """Errors of the kernels against the float64 NumPy reference and the torch CUDA path
    (``half_inputs``: float16 activations and dense gradients, both references fed the same
    float16 values)."""
    kernel = kernel or FusedEpilogue(torch.cuda.current_device())
    x = case_inputs(layout, method, seed, b, k, c, h, size)
    if half_inputs:
        x["acts"] = x["acts"].half()
        x["grads"] = x["grads"].half() if layout == "dense" else x["grads"]
    got = launch_fused(kernel, x, layout, method, size)
    x = {n: (v.float() if v.dtype == torch.float16 else v) for n, v in x.items()}
    got = {n: v.cpu().numpy() for n, v in got.items()}
    errors = reference_errors(got, {n: v.cpu().numpy() for n, v in x.items()}, layout, method,
                              size)
    th = torch_cuda_path(x, layout, method, size)
    return errors | {
        "maps max abs vs torch CUDA": float(np.abs(got["maps"] - th["maps"].cpu().numpy()).max()),
        "PE max abs vs torch CUDA": float(np.abs(energy_pe(got["energy"])
                                                 - th["pe"].cpu().numpy()).max()),
    }


def emulated_check(driver, seed: int = 0, b: int = 8, k: int = 40, c: int = 2048, h: int = 7,
                   size: int = 224, block: int = 256) -> list[dict]:
    """``run_fused_case``'s comparison with the kernels run by the CPU emulator (a
    ``gpu.emulation.build_driver`` build) instead of a GPU, on the same inputs (torch's CPU
    generator): a row per layout × method with its errors under ``LIMITS``' names and ``ok``."""
    from bincam.core.methods import METHODS
    from bincam.gpu.emulation import Case, run_cases

    rows = []
    for layout in ("dense", "factored"):
        for method in METHODS:
            x = {n: v.numpy() for n, v in
                 case_inputs(layout, method, seed, b, k, c, h, size, device="cpu").items()}
            case = Case(x["acts"], x["grads"], x["logits"], (size, size), method, layout,
                        masks=x["masks"], block=block, seed=seed)
            (out,) = run_cases(driver, [case], timeout=1800)
            errors = reference_errors(out, x, layout, method, size)
            rows.append({"layout": layout, "method": method, "seed": seed,
                         "ok": all(errors[n] <= limit for n, limit in LIMITS.items()), **errors})
    return rows


def cuda_time(fn, iters: int = 50, warmup: int = 5, stream=None) -> float:
    """Median seconds of ``fn``, timed with CUDA events recorded on ``stream`` (the one ``fn``
    launches on; the current stream where None)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


def launch_time(kernel: FusedEpilogue, arguments: dict, reps: int = 20, iters: int = 20) -> dict:
    """Seconds per launch on the GPU: ``reps`` launches captured once in a CUDA graph, each
    replay timed with events (nothing of Python inside the timed region). Falls back to events
    around ``reps`` back-to-back enqueues of the packed launch where capture fails."""
    stream = torch.cuda.Stream()
    launch = kernel.prepare(**arguments, stream=stream.cuda_stream)  # packed, workspace ready
    with torch.cuda.stream(stream):
        launch()
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(reps):
                launch()
        return {"seconds": cuda_time(graph.replay, iters) / reps, "timing": "CUDA graph"}
    except Exception as error:  # noqa: BLE001 - recorded, and timed the other way
        torch.cuda.synchronize()
        how = f"back-to-back enqueues ({type(error).__name__})"

    def enqueue():
        with torch.cuda.stream(stream):
            for _ in range(reps):
                launch()
    return {"seconds": cuda_time(enqueue, iters, stream=stream) / reps, "timing": how}


def copy_bandwidth(bytes_: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(bytes_ // 4, device="cuda")
    dst = torch.empty_like(src)
    return 2 * bytes_ / cuda_time(lambda: dst.copy_(src), iters=20)


def time_case(layout: str, method: str, bandwidth: float, b: int = 8, k: int = 40,
              c: int = 2048, h: int = 7, size: int = 224, kernel: FusedEpilogue | None = None,
              seed: int = 1) -> dict:
    """Kernel time (float32 maps, and uint8 maps only) vs its roofline at the measured copy
    bandwidth, achieved bandwidth, and vs bincam's torch CUDA path."""
    kernel = kernel or FusedEpilogue(torch.cuda.current_device())
    x = case_inputs(layout, method, seed, b, k, c, h, size)
    maps = torch.empty(b, k, size, size, device="cuda")
    maps_u8 = torch.empty(b, k, size, size, dtype=torch.uint8, device="cuda")
    energy = torch.empty(b, k, 2, device="cuda")
    common = dict(acts=x["acts"].data_ptr(), grads=x["grads"].data_ptr(),
                  logits=x["logits"].data_ptr(), shape=(b, k, c, h, h), size=(size, size),
                  method=method, layout=layout, masks=x["masks"].data_ptr(),
                  energy=energy.data_ptr())
    t32 = launch_time(kernel, dict(maps_f32=maps.data_ptr(), **common))
    t8 = launch_time(kernel, dict(maps_u8=maps_u8.data_ptr(), **common))
    t_torch = cuda_time(lambda: torch_cuda_path(x, layout, method, size), iters=20)
    shape = (b, k, c, h, h)
    bytes32 = launch_bytes(layout, shape, (size, size), "f32", block=kernel.block,
                           sms=kernel.sms)["total"]
    bytes8 = launch_bytes(layout, shape, (size, size), "u8", block=kernel.block,
                          sms=kernel.sms)["total"]
    return {"layout": layout, "method": method, "batch": b, "attributes": k, "channels": c,
            "cells": h, "size": size, "timing": t32["timing"],
            "fused_f32_s": t32["seconds"], "fused_u8_s": t8["seconds"], "torch_s": t_torch,
            "bytes_f32": bytes32, "bytes_u8": bytes8,
            "floor_f32_s": bytes32 / bandwidth, "floor_u8_s": bytes8 / bandwidth,
            "achieved_f32_bytes_per_s": bytes32 / t32["seconds"],
            "achieved_u8_bytes_per_s": bytes8 / t8["seconds"],
            "bandwidth_fraction_f32": bytes32 / bandwidth / t32["seconds"],
            "bandwidth_fraction_u8": bytes8 / bandwidth / t8["seconds"],
            "torch_over_fused_f32": t_torch / t32["seconds"]}


PERFORMANCE_FLOOR = 0.6          # achieved / copy bandwidth, float32 maps
PERFORMANCE_BATCHES = (8, 64)    # gated batches at the AFFACT shape (K = 40, C = 2048, 7×7 → 224²)


def performance_verdict(timings: list[dict], floor: float = PERFORMANCE_FLOOR) -> dict:
    """The performance gate, apart from correctness: every dense and factored timing at a gated
    batch reaches ``floor`` of the copy bandwidth (float32 maps); ``ok`` False where one misses
    it or a gated (layout, batch) was not timed."""
    gated = [t for t in timings if t["batch"] in PERFORMANCE_BATCHES]
    missing = [(layout, b) for layout in ("dense", "factored") for b in PERFORMANCE_BATCHES
               if not any(t["layout"] == layout and t["batch"] == b for t in gated)]
    slow = [{"layout": t["layout"], "batch": t["batch"],
             "fraction": t["bandwidth_fraction_f32"]} for t in gated
            if not t["bandwidth_fraction_f32"] >= floor]
    return {"floor": floor, "ok": not slow and not missing, "slow": slow, "missing": missing}
