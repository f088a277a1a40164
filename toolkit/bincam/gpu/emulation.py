"""The fused epilogue's CUDA kernels executed on the CPU, from the same source: a C++ compiler
builds ``kernels/emulation/driver.cpp`` (which includes the ``.cu`` file through
``kernels/emulation/cuda_host.h``: a std::thread per CUDA thread, a barrier of the block for
``__syncthreads``, per-warp barriers for shuffles and ballots) with AddressSanitizer + UBSan
(``"address"``), ThreadSanitizer (``"thread"``) or plain ``-O2`` (``None``), then runs cases with
exactly the geometry ``gpu.geometry`` gives a GPU. Builds are cached by the hash of the sources,
the compiler and the flags (``$BINCAM_CACHE/emulation``). For tests and ``benchmarks``: nothing in
the serving path imports this.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from bincam.core.methods import METHODS
from bincam.core.modes import MODES
from bincam.errors import BincamError
from bincam.files import write_atomic
from bincam.gpu.geometry import LAYOUT_IDS, check_choices, launch_geometry
from bincam.gpu.launcher import cache_dir, kernel_source

FLAGS = {"address": ["-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                     "-fno-omit-frame-pointer"],
         "thread": ["-O1", "-fsanitize=thread"],
         None: ["-O2"]}
OUTPUTS = ("raw", "maps", "maps_f16", "maps_u8", "energy")


class EmulationError(BincamError):
    """The emulated kernel failed: a sanitizer report, an abort or a deadlock (its stderr)."""


def emulation_file(name: str) -> str:
    """Text of ``kernels/emulation/<name>`` (packaged, or from a source checkout)."""
    packaged = resources.files("bincam").joinpath("kernels", "emulation", name)
    if packaged.is_file():
        return packaged.read_text()
    checkout = Path(__file__).resolve().parents[3] / "kernels" / "emulation" / name
    if checkout.is_file():
        return checkout.read_text()
    raise BincamError(f"kernels/emulation/{name} is missing from this installation")


def find_compiler() -> str | None:
    """``$CXX``, else g++ or clang++ on PATH (C++20 with <barrier>: g++ ≥ 11, clang++ ≥ 14)."""
    for candidate in (os.environ.get("CXX"), "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def build_driver(sanitizer: str | None = "address", source: str | None = None) -> Path:
    """The driver executable for ``source`` (default: the shipped kernel), built once."""
    cxx = find_compiler()
    if cxx is None:
        raise BincamError("the kernel emulation needs a C++20 compiler (g++ or clang++); "
                          "run scripts/emulation_setup.sh")
    source = kernel_source() if source is None else source
    header, driver = emulation_file("cuda_host.h"), emulation_file("driver.cpp")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    flags = ["-std=c++20", "-g", "-pthread", *FLAGS[sanitizer]]
    key = hashlib.sha256("\0".join([source, header, driver, version, *flags]).encode())
    path = cache_dir().parent / "emulation" / f"driver-{sanitizer or 'plain'}-{key.hexdigest()[:20]}"
    if path.is_file():
        return path
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in (("kernel.cu", source), ("cuda_host.h", header), ("driver.cpp", driver)):
            Path(tmp, name).write_text(text)
        proc = subprocess.run([cxx, *flags, f'-DBINCAM_KERNEL_SOURCE="{tmp}/kernel.cu"',
                               f"{tmp}/driver.cpp", "-o", f"{tmp}/driver"],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise BincamError(f"building the kernel emulation failed:\n{proc.stderr[-4000:]}")
        write_atomic(path, Path(tmp, "driver").read_bytes())
    path.chmod(0o755)
    return path


@dataclass
class Case:
    """One launch: float32 inputs as a GPU gets them, the choices, and geometry overrides."""

    acts: np.ndarray                      # [B, C, h, w]
    grads: np.ndarray                     # dense [B, K, C, h, w] | factored [K, C]
    logits: np.ndarray                    # [B, K]
    size: tuple[int, int]
    method: str = "gradcam"
    layout: str = "dense"
    mode: str = "predicted"
    mask_positive: bool = True
    masks: np.ndarray | None = None       # [K, H, W] of 0/1
    block: int = 256
    outputs: tuple[str, ...] = OUTPUTS
    overrides: dict = field(default_factory=dict)  # splits, tile, kc, tiles; sms
    seed: int = 0
    half_inputs: bool = False             # activations (and dense gradients) as binary16

    def header(self) -> np.ndarray:
        check_choices(self.method, self.layout, self.mode)
        b, c, h, w = self.acts.shape
        k = self.logits.shape[1]
        extra = dict(self.overrides)
        g = launch_geometry(self.layout, (b, k, c, h, w), self.size, self.block,
                            sms=extra.pop("sms", 132), shared_limit=1 << 30, **extra)
        if "energy" in self.outputs and self.masks is None:
            raise BincamError("energies need masks")
        want = [int(name in self.outputs) for name in OUTPUTS]
        return np.array([LAYOUT_IDS[self.layout], METHODS[self.method].id, MODES[self.mode],
                         int(self.mask_positive), b, k, c, h, w, *self.size, self.block, g.splits,
                         g.tile, g.kc, g.tiles, g.smem_partials, g.smem_finish, *want,
                         int(self.masks is not None), self.seed, int(self.half_inputs)],
                        dtype=np.int32)

    def arrays(self) -> list[np.ndarray]:
        half = np.float16 if self.half_inputs else np.float32
        dtypes = (half, half if self.layout == "dense" else np.float32, np.float32)
        out = [np.ascontiguousarray(x, dtype=t)
               for x, t in zip((self.acts, self.grads, self.logits), dtypes)]
        if self.masks is not None:
            out.append(np.ascontiguousarray(self.masks, dtype=np.uint8))
        return out


def run_cases(driver: Path, cases: list[Case], timeout: int = 600) -> list[dict[str, np.ndarray]]:
    """Every case through ``driver`` in one process; their outputs ``raw [B,K,h,w]``, ``maps``
    (float32), ``maps_f16`` (uint16 bits), ``maps_u8`` and ``energy [B,K,2]``."""
    with tempfile.TemporaryDirectory() as tmp:
        with open(Path(tmp, "cases.bin"), "wb") as f:
            np.array([len(cases)], dtype=np.int32).tofile(f)
            for case in cases:
                case.header().tofile(f)
                for array in case.arrays():
                    array.tofile(f)
        env = {**os.environ, "TSAN_OPTIONS": "exitcode=66 report_signal_unsafe=0",
               "ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
        proc = subprocess.run([str(driver), f"{tmp}/cases.bin", f"{tmp}/out.bin", str(timeout)],
                              capture_output=True, text=True, timeout=timeout + 60, env=env)
        if proc.returncode != 0 or "WARNING: ThreadSanitizer" in proc.stderr:
            raise EmulationError(f"the emulated kernels failed (exit {proc.returncode}):\n"
                                 f"{proc.stderr[-6000:]}")
        data = np.fromfile(Path(tmp, "out.bin"), dtype=np.uint8)
    results, at = [], 0
    for case in cases:
        b, _, h, w = case.acts.shape
        k = case.logits.shape[1]
        shapes = {"raw": ((b, k, h, w), np.float32), "maps": ((b, k, *case.size), np.float32),
                  "maps_f16": ((b, k, *case.size), np.uint16),
                  "maps_u8": ((b, k, *case.size), np.uint8), "energy": ((b, k, 2), np.float32)}
        result = {}
        for name in OUTPUTS:
            if name in case.outputs:
                shape, dtype = shapes[name]
                nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
                result[name] = data[at:at + nbytes].view(dtype).reshape(shape)
                at += nbytes
        results.append(result)
    if at != data.size:
        raise EmulationError(f"the driver wrote {data.size} bytes, {at} expected")
    return results


def _convert(driver: Path, flag: str, values: np.ndarray, dtype) -> np.ndarray:
    """Run the driver's conversion mode ``flag`` on ``values`` (through files)."""
    with tempfile.TemporaryDirectory() as tmp:
        np.ascontiguousarray(values).tofile(f"{tmp}/in")
        proc = subprocess.run([str(driver), flag, f"{tmp}/in", f"{tmp}/out"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise EmulationError(proc.stderr[-4000:])
        return np.fromfile(f"{tmp}/out", dtype=dtype)


def to_half_bits(driver: Path, values: np.ndarray) -> np.ndarray:
    """The kernel's float → binary16 conversion (``bincam_to_half``) of ``values``."""
    return _convert(driver, "--half", np.asarray(values, dtype=np.float32), np.uint16)


def from_half_bits(driver: Path, bits: np.ndarray) -> np.ndarray:
    """The kernel's binary16 → float conversion (``bincam_from_half``) of ``bits``."""
    return _convert(driver, "--from-half", np.asarray(bits, dtype=np.uint16), np.float32)
