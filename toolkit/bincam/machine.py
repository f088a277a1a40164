"""What machine a number was measured on: CPU model, cores, memory, GPU, library versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict:
    """A JSON-able description of this machine and the relevant library versions."""
    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": _memory_gib(),
            "python": platform.python_version(), "platform": platform.platform(), "gpu": None,
            "versions": {}}
    for pkg in ("bincam", "torch", "torchvision", "numpy", "onnx", "onnxruntime", "pillow"):
        try:
            info["versions"][pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    info["gpu"] = _gpu_name()
    return info


def _gpu_name() -> str | None:
    """The first GPU's name: from torch if it is already loaded, else from nvidia-smi (so
    torch-free callers stay torch-free)."""
    import sys

    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = out.stdout.strip().splitlines()
    return names[0].strip() if out.returncode == 0 and names else None


def machine_line(info: dict | None = None) -> str:
    info = info or machine_info()
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
    return f"{info['cpu']}, {info['cores']} cores{gpu}"
