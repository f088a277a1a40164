"""Serving bincam models with Triton Inference Server (``bincam serve``).

``handler`` turns Triton requests into engine calls (no Triton needed: tested alone),
``backend`` is the Python-backend model Triton runs (inside Triton's stub process),
``repository`` writes and validates model repositories, ``server`` finds and runs
``tritonserver``. No torch here: the served environment is the torch-free runtime.
"""
