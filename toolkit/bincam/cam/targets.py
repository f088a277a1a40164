"""A pytorch-grad-cam target that implements the paper's binary rule, for users of that library.

``BinaryLogitTarget(a)`` scores attribute ``a`` of a multi-logit binary classifier by ``|z_a|``
(``mode="predicted"``: explains the predicted class), ``z_a`` (``"positive"``) or ``−z_a``
(``"negative"``). Pass one per image in the ``targets`` list of any pytorch-grad-cam CAM. Works on
a model output row ``[K]`` or a batch ``[B, K]``; a one-logit model uses index 0.
"""

from __future__ import annotations

from bincam.core.modes import MODES


class BinaryLogitTarget:
    def __init__(self, index: int, mode: str = "predicted"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.index, self.mode = int(index), mode

    def __call__(self, model_output):
        z = model_output[..., self.index]
        if self.mode == "predicted":
            return z.abs()
        return z if self.mode == "positive" else -z

    def __repr__(self) -> str:
        return f"BinaryLogitTarget({self.index}, mode={self.mode!r})"
