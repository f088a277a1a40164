"""The paper's bias audit at dataset scale (``bincam analyze``).

``runner`` streams a dataset through each model shard by shard (``stream``, ``models``), ``compute``
turns engine outputs into per-image columns and exact average-map sums, ``store`` keeps the
resumable output folder, ``aggregate`` gives per-attribute figures, and ``report``, ``tables``
and ``plots`` write what people read.
"""

from bincam.analysis.runner import AnalyzeOptions, analyze

__all__ = ["AnalyzeOptions", "analyze"]
