"""Peak memory of one measured scope: resident set (Linux VmHWM, reset per scope through
``/proc/self/clear_refs``; else the process-lifetime ``ru_maxrss``) and CUDA max allocated."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Start a new RSS peak; False where the OS does not allow it (then peaks are cumulative)."""
    try:
        _CLEAR.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    hwm = _hwm_bytes()
    if hwm is not None:
        return hwm
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class PeakMemory:
    """``with PeakMemory(cuda) as m: …`` then ``m.rss_bytes`` / ``m.cuda_bytes`` (None off CUDA)."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.rss_bytes = 0
        self.cuda_bytes = None
        self.scoped = False

    def __enter__(self):
        self.scoped = reset_peak()
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        self.rss_bytes = peak_rss_bytes()
        if self.cuda:
            import torch

            self.cuda_bytes = int(torch.cuda.max_memory_allocated())
        return False
