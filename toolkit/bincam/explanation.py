"""``bincam.explain``: binary CAMs for every selected attribute of a batch, from one forward pass.

    result = bincam.explain(model, images, method="gradcam", mode="predicted")
    result.logits, result.raw            # [B, K], [B, K, h, w]
    result.heatmaps(224)                 # [B, K, 224, 224] final maps in [0, 1]
    result.proportional_energy()         # [B, K], each attribute's own mask

The signed gradient is ``G = s·∂z/∂A`` with ``s`` from the mode (``predicted``: ``sign(z)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from bincam.attributes import ATTRIBUTES, resolve_attributes
from bincam.batch_checks import check_float_values, check_shape, wrong_dtype
from bincam.cam import epilogue as torch_epilogue
from bincam.cam.gradients import layer_gradients
from bincam.cam.methods import FactoredGrad, method as get_method
from bincam.cam.modes import signs
from bincam.errors import BincamError
from bincam.heatmap import attribute_energy


def model_attributes(model: nn.Module) -> list[str]:
    """Names of a net's outputs: from its card, else CelebA's 40, else ``logit0…``."""
    card = getattr(model, "card", None)
    if card is not None:
        return list(card.attributes)
    k = model.arch_config["num_outputs"] if hasattr(model, "arch_config") else None
    return list(ATTRIBUTES) if k == len(ATTRIBUTES) else [f"logit{i}" for i in range(k or 0)]


def check_images(images, expected_size: int | None = None) -> torch.Tensor:
    """Validate a batch ``[B, 3, S, S]`` (uint8, or float in [0, 1]); return it as float in [0, 1]."""
    x = torch.as_tensor(images)
    check_shape(x.shape, expected_size)
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise wrong_dtype(x.dtype)
    finite = torch.isfinite(x).flatten(1).all(1)
    check_float_values((~finite).nonzero().flatten().tolist(), float(x.min()), float(x.max()))
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@dataclass
class Explanation:
    """Logits and raw binary CAMs of a batch for the selected attributes."""

    attributes: list[str]
    logits: torch.Tensor           # [B, K] raw scores of the selected attributes
    signs: torch.Tensor            # [B, K] s ∈ {−1, 0, 1} applied to the gradients
    raw: torch.Tensor              # [B, K, h, w] float64 weighted sums (before ReLU, min-max)
    method: str
    mode: str
    layer: str
    input_size: int
    closed_form: bool

    @property
    def probabilities(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def predictions(self) -> torch.Tensor:
        """1 where ``z ≥ 0`` (the attribute is predicted present)."""
        return (self.logits >= 0).to(torch.uint8)

    def heatmaps(self, size: int | None = None) -> torch.Tensor:
        """Final maps ``[B, K, S, S]`` (float32, in [0, 1]; default size: the input size)."""
        return torch_epilogue.epilogue(self.raw, size or self.input_size)

    def proportional_energy(self, size: int | None = None, corrected: bool = False) -> np.ndarray:
        """PE ``[B, K]`` of each final map inside its attribute's mask (fast exact form)."""
        energy = attribute_energy(tuple(self.attributes), size or self.input_size,
                                  tuple(self.raw.shape[-2:]))
        raw = self.raw.detach().cpu().double().numpy()
        return energy.corrected(raw) if corrected else energy(raw)


def explain(model: nn.Module | str | Path, images, method: str = "gradcam",
            mode: str = "predicted", attributes: str | Sequence[str | int] | None = None,
            layer: str | None = None, closed_form: bool | None = None) -> Explanation:
    """Binary CAMs of ``images`` for the selected attributes (default: all) from one forward.

    ``model``: a bincam net or a checkpoint folder; ``closed_form``: ``None`` uses it where the
    head allows, ``True`` insists, ``False`` forces autograd.
    """
    if isinstance(model, (str, Path)):
        from bincam.checkpoint import load_checkpoint

        model = load_checkpoint(model)
    fn = get_method(method)
    known = model_attributes(model)
    names = resolve_attributes(attributes, known)
    indices = [known.index(n) for n in names]
    layer = layer or model.default_cam_layer
    card = getattr(model, "card", None)
    param = next(model.parameters())
    x = check_images(images, card.image_size if card else None).to(param.device, param.dtype)
    if model.training:
        raise BincamError("the model is in training mode; call model.eval() first")
    lg = layer_gradients(model, x, layer, indices, closed_form)
    logits = lg.logits[:, indices]
    # CAM arithmetic in float64: min-max normalisation magnifies rounding in flat maps
    a = lg.activations.double()
    s = signs(logits, mode).double()
    if isinstance(lg.grads, FactoredGrad):
        mask = None if lg.grads.mask is None else lg.grads.mask.double()
        grads = FactoredGrad(s, lg.grads.weight.double(), mask)
    else:
        grads = s[:, :, None, None, None] * lg.grads.double()
    raw = fn(a, grads)
    return Explanation(names, logits, s, raw, method, mode, layer, x.shape[-1],
                       isinstance(lg.grads, FactoredGrad))
