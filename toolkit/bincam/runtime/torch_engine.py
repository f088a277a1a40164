"""The eager PyTorch engine: a bincam net (or checkpoint), one forward, the gradients of every
selected logit — the only engine that imports torch.

Gradients come from ``bincam.cam.gradients``: the closed form of an affine head (no backward;
output ``channel_weights = W_eff/(h·w)`` in float64) where the CAM layer has one, else one batched
autograd pass (output ``gradients``). ``closed_form``: ``None`` uses it where the head allows,
``True`` insists, ``False`` forces autograd. The CAM arithmetic is the core's, as for every engine.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bincam.attributes import ATTRIBUTES
from bincam.core.checks import check_float_values, check_shape, wrong_dtype
from bincam.core.model_info import ModelInfo
from bincam.errors import BincamError
from bincam.runtime.engine import Engine


def model_attributes(model: nn.Module) -> list[str]:
    """Names of a net's outputs: from its card (or a wrapped net's names), else CelebA's 40,
    else ``logit0…``."""
    if getattr(model, "attribute_names", None):
        return list(model.attribute_names)
    card = getattr(model, "card", None)
    if card is not None:
        return list(card.attributes)
    k = model.arch_config["num_outputs"] if hasattr(model, "arch_config") else None
    return list(ATTRIBUTES) if k == len(ATTRIBUTES) else [f"logit{i}" for i in range(k or 0)]


def model_info(model: nn.Module, layer: str | None = None,
               closed_form: bool | None = None) -> ModelInfo:
    """The ``ModelInfo`` of a net: from its card where it has one; layout from its head."""
    layer = layer or model.default_cam_layer
    head = getattr(model, "affine_heads", {}).get(layer)
    factored = head is not None and closed_form is not False
    layout, mask_positive = ("factored" if factored else "dense"), bool(factored and head.relu)
    card = getattr(model, "card", None)
    if card is not None:
        return ModelInfo.from_card(card, layer, layout, mask_positive)
    return ModelInfo(model_attributes(model), layer, layout, None, mask_positive,
                     token_layout=getattr(model, "token_layout", "none"))


class TorchEngine(Engine):
    kind = "torch"

    def __init__(self, model: nn.Module, device: str | None = None, layer: str | None = None,
                 closed_form: bool | None = None, threads: int | None = None):
        if device is not None:
            if str(device).startswith("cuda") and not torch.cuda.is_available():
                raise BincamError(f"--device {device}: torch sees no CUDA GPU on this machine")
            model = model.to(device)
        if model.training:
            raise BincamError("the model is in training mode; call model.eval() first")
        if threads:
            torch.set_num_threads(threads)
        self.model, self.closed_form = model, closed_form
        self.info = model_info(model, layer, closed_form)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        if self.device.type == "cuda":
            self.capabilities = frozenset({"torch_cuda_memory"})

    def check_images(self, images) -> torch.Tensor:
        """A batch ``[B, 3, S, S]`` (uint8, or float in [0, 1]) as float on the model's device.
        A wrapped net of the user's (``input_range`` None) takes any finite floats, as its own
        preprocessing made them."""
        x = torch.as_tensor(images)
        check_shape(x.shape, self.info.image_size)
        if x.dtype == torch.uint8:
            x = x.to(self.device).float().div_(255.0)
        elif not x.is_floating_point():
            raise wrong_dtype(x.dtype)
        else:
            finite = torch.isfinite(x).flatten(1).all(1)
            free = getattr(self.model, "input_range", (0, 1)) is None and bool(finite.all())
            if not free:
                check_float_values((~finite).nonzero().flatten().tolist(), float(x.min()),
                                   float(x.max()))
        return x.to(self.device, self.dtype)

    def _run(self, images, indices: list[int]) -> dict[str, np.ndarray]:
        from bincam.cam.gradients import layer_gradients

        lg = layer_gradients(self.model, self.check_images(images), self.info.target_layer,
                             indices, self.closed_form)
        out = {"logits": _numpy(lg.logits[:, indices]), "activations": _numpy(lg.activations)}
        if lg.channel_weights is not None:
            out["channel_weights"] = _numpy(lg.channel_weights)
        else:
            out["gradients"] = _numpy(lg.grads)
        return out

    def run_forward(self, images) -> np.ndarray:
        x = self.check_images(images)
        with torch.inference_mode():
            return _numpy(self.model(x))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
