"""A torch classifier of the user's own → the gradient ONNX file a checkpoint gets.

    bincam.export_torch(net, example, layer=net.layer4, out="model.onnx")
    bincam export --torch "package.module:factory" --layer layer4 --out model.onnx

The net is wrapped (``nets.wrapped``: tap at the layer, logits picked, tokens as maps, affine head
found), then exported exactly as a checkpoint is (``export_checkpoint``: forward, factored channel
weights or the VJP subgraph) and checked the same way (self-checks, parity with the torch net).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from bincam.errors import BincamError


def example_size(example) -> int | None:
    """The input side of ``example`` (an image batch ``[B, 3, S, S]``, or the side itself)."""
    if example is None:
        return None
    if isinstance(example, int):
        return example
    shape = tuple(getattr(example, "shape", ()))
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise BincamError(f"example must be an image batch [B, 3, S, S] (or the side S); got "
                          f"{list(shape) or type(example).__name__}")
    return int(shape[-1])


def torch_gradient_graph(net, example=None, layer=None, gradients: str = "auto", **options):
    """``(ModelProto, wrapped net)``: the gradient graph of ``net`` at ``layer``, unchecked.
    ``options``: ``outputs``, ``tokens``, ``names`` (see ``nets.wrapped``)."""
    from bincam.export.model import export_checkpoint
    from bincam.nets.wrapped import wrap_classifier

    if callable(options.get("tokens")):
        raise BincamError("a tokens reshape callable runs in torch only; to export, use "
                          "tokens='vit' or 'swin'")
    size = example_size(example)
    wrapped = wrap_classifier(net, layer, **{k: v for k, v in options.items() if v is not None},
                              **({"input_size": size} if size and not hasattr(net, "cam_layers")
                                 else {}))
    name = wrapped.default_cam_layer if wrapped is not net else layer
    return export_checkpoint(wrapped, name, gradients), wrapped


def export_torch(net, example=None, layer=None, out: str | Path | None = None,
                 gradients: str = "auto", checks: bool = True, target: str = "ort", **options):
    """The checked gradient ONNX model of ``net`` (written atomically to ``out`` if given; nothing
    is written when a check fails). ``example``: an image batch or the input side (default:
    timm's configured size, else 224). ``target``: ``ort``, ``trt`` or ``any`` — the TensorRT
    lint refuses only for ``trt`` and ``any`` (``checks.run_checks``)."""
    from bincam.export.checks import check_target, run_checks
    from bincam.export.model import save_onnx

    check_target(target)
    if out is not None:
        from bincam.files import check_output

        check_output(Path(out), "out", folder=False)
    model, wrapped = torch_gradient_graph(net, example, layer, gradients, **options)
    if checks:
        failed = [f"{c.name} ({c.advice or c.detail})" for c in run_checks(model, wrapped, target)
                  if not c.ok]
        if failed:
            raise BincamError(f"export checks failed: {'; '.join(failed)}; nothing written")
    if out is not None:
        save_onnx(model, out)
    return model


def load_factory(spec: str):
    """The eval-mode module ``package.module:factory()`` returns (the current folder importable,
    as ``python -m`` has it)."""
    import torch

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BincamError(f"--torch takes 'package.module:factory', got {spec!r}")
    added = str(Path.cwd()) not in sys.path
    if added:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BincamError(f"--torch {spec}: cannot import {module_name} ({exc})") from None
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise BincamError(f"--torch {spec}: {module_name} has no callable {attr!r}")
    try:
        net = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory may raise anything
        raise BincamError(f"--torch {spec}: calling {attr}() failed ({type(exc).__name__}: "
                          f"{str(exc)[:160]})") from None
    if not isinstance(net, torch.nn.Module):
        raise BincamError(f"--torch {spec}: {attr}() returned a {type(net).__name__}, not a "
                          "torch.nn.Module")
    return net.eval()
