"""The steps of ``scripts/gpu_check.sh`` before the GPU check itself, one line each: the check's
imports (``benchmarks/gpu_check.py`` loaded as a module, so exactly what it imports), NVRTC (its
version, and the kernels compiled to a cubin for this GPU's architecture, or for sm_90 where
there is no GPU) and a CUDA GPU. Exit status 0: all there; 1: a step failed; 3: every step
worked but there is no CUDA GPU."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = 3


def line(status: str, what: str) -> None:
    print(f"{status:<4} {what}", flush=True)


def main() -> int:
    start = time.perf_counter()
    try:
        spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" /
                                                      "gpu_check.py")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        import torch
    except ImportError as exc:
        line("FAIL", f"imports of benchmarks/gpu_check.py: {type(exc).__name__}: {exc} (add "
                     "the package to scripts/gpu_check_wheels.txt, then run "
                     "scripts/gpu_check_wheels.sh where pip reaches PyPI)")
        return 1
    import bincam
    from bincam.errors import BincamError
    from bincam.gpu import launcher

    line("ok", f"imports of benchmarks/gpu_check.py in {time.perf_counter() - start:.1f} s "
               f"(bincam from {Path(bincam.__file__).parent}, torch {torch.__version__})")
    gpu = torch.cuda.is_available()
    arch = "sm_{}{}".format(*torch.cuda.get_device_capability(0)) if gpu else "sm_90"
    start = time.perf_counter()
    try:
        version = launcher.nvrtc_version()
        cubin = launcher.cached_cubin(arch)
    except BincamError as exc:
        line("FAIL", f"NVRTC: {exc}")
        return 1
    line("ok", f"NVRTC {version[0]}.{version[1]}: the kernels compiled for {arch} "
               f"({len(cubin)} bytes, {time.perf_counter() - start:.1f} s, cached in "
               f"{launcher.cache_dir()})")
    if not gpu:
        line("FAIL", f"no CUDA GPU: torch {torch.__version__} (CUDA {torch.version.cuda}) sees "
                     "none; run this on a machine with an NVIDIA GPU")
        return NO_GPU
    line("ok", f"CUDA GPU: {torch.cuda.get_device_name(0)} ({arch}), CUDA {torch.version.cuda}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
