"""Any eval-mode torch classifier as a bincam net: ``WrappedClassifier(net, layer=…)``.

The wrapper offers what bincam's own nets offer (``cam_layers``, ``default_cam_layer``,
``affine_heads``, ``arch_config``), so the torch engine, ``cam.gradients``, the export and its
parity checks take it unchanged:

- ``layer``: a module of ``net`` or its dotted name; during each forward its output ``T`` goes
  through a ``Tap`` (as maps ``[B, C, h, w]``, see ``token_maps``) and on to the rest of the net;
- ``outputs``: a callable picking the logits ``[B, K]`` from the net's output (a dict or tuple,
  as Hugging Face models return); by default a tensor, or the ``logits`` entry of a dict;
- ``tokens``: ``"vit"``, ``"swin"`` or a reshape callable for a transformer's tokens;
- ``names``: the K attribute names (default ``logit0 … logitK−1``).

A probe forward at ``input_size`` (default: timm's ``pretrained_cfg``, else 224) checks all of it
once and finds the affine head, if any (``head_probe``): then gradients have the closed form.
Images go to ``net`` as given (already normalised as the net expects), like pytorch-grad-cam.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Callable

import torch
from torch import nn

from bincam.errors import BincamError
from bincam.nets.head_probe import linear_chain, probe_affine_head
from bincam.nets.taps import Tap
from bincam.nets.token_maps import TokenMaps


def resolve_layer(net: nn.Module, layer) -> str:
    """The dotted name of ``layer`` (a module of ``net`` or a name); a clear error otherwise."""
    if layer is None:
        raise BincamError("give layer=: the CAM layer of your model, as the module itself (e.g. "
                          "net.layer4) or its dotted name (e.g. 'layer4')")
    names = [name for name, _ in net.named_modules() if name]
    if isinstance(layer, nn.Module):
        found = next((name for name, m in net.named_modules() if m is layer and name), None)
        if found is None:
            raise BincamError(f"layer= is a {type(layer).__name__} that is not a submodule of "
                              f"this {type(net).__name__}; pass one of its own modules")
        return found
    if not isinstance(layer, str):
        raise BincamError(f"layer= must be a module or a dotted name, not a "
                          f"{type(layer).__name__}")
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.6)
        top = [n for n in names if "." not in n]
        raise BincamError(f"no layer {layer!r} in this {type(net).__name__}; "
                          + (f"close names: {', '.join(close)}" if close else
                             f"its top-level modules: {', '.join(top[:12])}"))
    return layer


def pick_logits(out, outputs: Callable | None) -> torch.Tensor:
    """The logits ``[B, K]`` of a net's output (see the module's docstring)."""
    if outputs is not None:
        out = outputs(out)
    elif not isinstance(out, torch.Tensor):
        picked = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
        if not isinstance(picked, torch.Tensor):
            raise BincamError(f"the model returns a {type(out).__name__}, not a logits tensor; "
                              "pass outputs= a callable that picks the logits [B, K] from it "
                              "(e.g. outputs=lambda out: out[0])")
        out = picked
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or not out.is_floating_point():
        what = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BincamError(f"the model's logits must be a float tensor [B, K]; got {what} (pass "
                          "outputs= a callable that returns them)")
    return out


def probe_size(net: nn.Module, input_size: int | None) -> int:
    if input_size:
        return int(input_size)
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None)
    size = cfg.get("input_size") if isinstance(cfg, Mapping) else None
    return int(size[-1]) if size else 224


class WrappedClassifier(nn.Module):
    """``net`` with a tap at ``layer`` and the logits picked from its output."""

    arch = "wrapped"

    def __init__(self, net: nn.Module, layer, outputs: Callable | None = None,
                 tokens: str | Callable | None = None, names: list[str] | None = None,
                 input_size: int | None = None):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise BincamError(f"the model must be a torch.nn.Module, not a {type(net).__name__}")
        if net.training:
            raise BincamError("the model is in training mode; call model.eval() first")
        self.net, self.tap, self.outputs = net, Tap(), outputs
        self.training = False
        self.layer_path = resolve_layer(net, layer)
        self.token_maps = TokenMaps(tokens, net, self.layer_path)
        self.token_layout = self.token_maps.name if self.token_maps.name in ("vit", "swin") \
            else "none"
        self.cam_layers = {self.layer_path: "tap"}
        self.default_cam_layer = self.layer_path
        self.card, self.affine_heads = None, {}
        self.input_range = None  # images reach the net as given (no [0, 1] rule)
        self.image_size = probe_size(net, input_size)
        k = self._probe(names)
        self.arch_config = {"arch": type(net).__name__, "num_outputs": k}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        calls = []

        def route(_module, _inputs, out):
            calls.append(len(calls))
            if len(calls) > 1 or not isinstance(out, torch.Tensor):
                return None
            self.token_maps.prepare(out)
            restored = self.token_maps.restore(out, self.tap(self.token_maps.maps(out)))
            return restored.clone()  # the net may change it in place; the tap keeps its A

        handle = self.net.get_submodule(self.layer_path).register_forward_hook(route)
        try:
            out = self.net(x)
        finally:
            handle.remove()
        if len(calls) != 1:
            raise BincamError(f"layer {self.layer_path!r} ran {len(calls)} times in one forward; "
                              "pick a module that runs once (not a shared one such as a ReLU "
                              "reused by a block)")
        return pick_logits(out, self.outputs)

    def _probe(self, names: list[str] | None) -> int:
        """One forward of a random image: checks the layer, tokens and logits, finds the head."""
        param = next(self.net.parameters(), None)
        device, dtype = (param.device, param.dtype) if param is not None else ("cpu", None)
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(1, 3, self.image_size, self.image_size, generator=generator)
        x = x.to(device, dtype or torch.float32)
        seen, after = {}, []

        def record(path):
            return lambda m, _i, _o: after.append((path, m)) if "a" in seen else None

        def keep(_m, _i, out):
            seen["a"] = out

        leaves = [(p, m) for p, m in self.net.named_modules() if not any(True for _ in
                                                                          m.children())]
        handles = [m.register_forward_hook(record(p)) for p, m in leaves]
        handles.append(self.tap.register_forward_hook(keep))
        try:
            with torch.no_grad():
                z = self(x)
        except BincamError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's net may raise anything
            raise BincamError(f"running the model on a [1, 3, {self.image_size}, "
                              f"{self.image_size}] probe failed ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); pass "
                              "input_size= the size it takes") from None
        finally:
            for h in handles:
                h.remove()
        if "a" not in seen:
            raise BincamError(f"layer {self.layer_path!r} does not output a tensor")
        k = z.shape[1]
        if names is not None and len(names) != k:
            raise BincamError(f"the model has {k} logits but {len(names)} names were given")
        self.attribute_names = list(names) if names else [f"logit{i}" for i in range(k)]
        a = seen["a"]
        if self.token_maps.layout is None:
            paths = linear_chain([(f"net.{p}", m) for p, m in after], a.shape[1], k)
            head = probe_affine_head(self, paths, a, z, lambda other: self._with(x, other))
            if head is not None:
                self.affine_heads = {self.layer_path: head}
        return k

    def _with(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The logits with the layer's maps replaced by ``a``."""
        handle = self.tap.register_forward_hook(lambda _m, _i, _o: a)
        try:
            return self(x)
        finally:
            handle.remove()


def wrap_classifier(net: nn.Module, layer=None, **options) -> nn.Module:
    """``net`` itself if it is a bincam net (``cam_layers``), else a ``WrappedClassifier``."""
    if hasattr(net, "cam_layers"):
        if options:
            raise BincamError(f"{', '.join(sorted(options))} only apply to a model of your own, "
                              "not to a bincam net")
        return net
    return WrappedClassifier(net, layer, **options)
