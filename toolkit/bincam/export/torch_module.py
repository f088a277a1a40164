"""A torch classifier of the user's own → the gradient ONNX file a checkpoint gets.

    bincam.export_torch(net, example, layer=net.layer4, out="model.onnx")
    bincam export --torch "package.module:factory" --layer layer4 --out model.onnx

The net is wrapped (``nets.wrapped``: tap at the layer, logits picked, tokens as maps, affine head
found), then exported exactly as a checkpoint is (``export_checkpoint``: forward, factored channel
weights or the VJP subgraph) and checked the same way (self-checks, parity with the torch net, on
the net's own input tensor). The net's preprocessing (``preprocessing=``, ``fit=``; the CLI's
``--mean``, ``--std``, ``--pixel-range``, ``--channel-order``, ``--preprocess``, ``--fit``) is then
recorded in the metadata as ``export_onnx_classifier`` records it, so every command feeds the file
``core.preprocess``'s input (NCHW: the layout torch nets take).
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


def check_torch_preprocessing(preprocessing):
    """``preprocessing`` (``core.preprocess.Preprocessing`` or None) for a torch net, checked
    before any work: its input is exported NCHW ``[B, 3, S, S]``."""
    if preprocessing is None:
        return None
    preprocessing.check()
    if preprocessing.layout != "nchw":
        raise BincamError(f"--layout {preprocessing.layout}: a torch model is exported with the "
                          "NCHW input [B, 3, S, S] it is probed with; leave --layout out (or "
                          "give nchw)")
    return preprocessing


def with_preprocessing(model, preprocessing=None, fit: str | None = None):
    """``model``'s metadata with the net's own input preprocessing and ``fit`` (``data.fit``)
    recorded; ``raw_pixels`` is not (``input_spec.raw_pixel_input`` adds that input after)."""
    from bincam.core.model_info import onnx_info, write_metadata
    from bincam.data.fit import check_fit

    if preprocessing is None and fit is None:
        return model
    info = onnx_info(model, "the exported model")
    if check_torch_preprocessing(preprocessing) is not None:
        info.pixel_range, info.mean, info.std = (preprocessing.pixel_range, preprocessing.mean,
                                                 preprocessing.std)
        info.channel_order, info.layout = preprocessing.channel_order, preprocessing.layout
    if fit is not None:
        info.input_fit = check_fit(fit, "--fit")
    write_metadata(model, info)
    return model


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
                 gradients: str = "auto", checks: bool = True, target: str = "ort",
                 preprocessing=None, fit: str | None = None, **options):
    """The checked gradient ONNX model of ``net`` (written atomically to ``out`` if given; nothing
    is written when a check fails). ``example``: an image batch or the input side (default:
    timm's configured size, else 224). ``target``: ``ort``, ``trt`` or ``any`` — the TensorRT
    lint refuses only for ``trt`` and ``any`` (``checks.run_checks``). ``preprocessing``: how RGB
    pixels in [0, 1] become the net's input (``core.preprocess.Preprocessing``, e.g. from
    ``export.preprocess_sources.from_torchvision(weights)``), recorded for every command;
    ``fit``: how images of other sizes enter the frame (``data.fit``)."""
    from bincam.export.checks import check_target, run_checks
    from bincam.export.model import save_onnx

    check_target(target)
    check_torch_preprocessing(preprocessing)
    if out is not None:
        from bincam.files import check_output

        check_output(Path(out), "out", folder=False)
    model, wrapped = torch_gradient_graph(net, example, layer, gradients, **options)
    if checks:  # on the net's input tensor itself, as the torch net takes it
        failed = [f"{c.name} ({c.advice or c.detail})" for c in run_checks(model, wrapped, target)
                  if not c.ok]
        if failed:
            raise BincamError(f"export checks failed: {'; '.join(failed)}; nothing written")
    model = with_preprocessing(model, preprocessing, fit)
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
