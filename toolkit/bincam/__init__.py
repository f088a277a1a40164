"""bincam: binary class activation maps for one-logit and multi-label binary image classifiers.

Importing ``bincam`` is light: torch-dependent parts load on first use, so the serving runtime can
run without PyTorch.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_checkpoint": "bincam.checkpoint",
    "save_checkpoint": "bincam.checkpoint",
    "build_net": "bincam.nets",
    "explain": "bincam.runtime",
    "open_engine": "bincam.runtime",
    "export_torch": "bincam.export.torch_module",
    "Explanation": "bincam.core.explanation",
    "analyze": "bincam.analysis",
    "AnalyzeOptions": "bincam.analysis",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bincam' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
