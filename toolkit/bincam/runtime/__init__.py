"""Engines behind one contract (``engine.Engine``), opened by ``open_engine``: the only place that
decides which engine a model runs on.

    from bincam.runtime import open_engine
    with open_engine("models/synth-small-balanced", engine="ort") as engine:
        result = engine.explain(images, method="gradcam", mode="predicted")

``model``: a checkpoint folder, an exported ``.onnx`` file (or its bytes), or a torch net: a
bincam net, or any eval-mode classifier of your own with ``layer=`` (the module or its dotted
name) and optionally ``outputs=``, ``tokens=``, ``names=``, ``input_size=``
(``nets.wrapped.WrappedClassifier``; its images go in as the net takes them).
``engine``: ``auto`` (torch for a checkpoint or net, ort for ONNX), ``torch``, ``ort`` or ``trt``;
a checkpoint or net given to ort/trt is exported first (that step needs torch). Options go to the
engine: torch ``closed_form``; ort ``optimize``, ``spin``; trt ``max_batch``, ``opt_batch``,
``cache``, ``cuda_graphs``; ``export_cache`` (a folder) keeps the export of a checkpoint for later
runs. Importing this package does not import torch.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from bincam.core.model_info import CARD, WEIGHTS, checkpoint_folder, is_checkpoint
from bincam.errors import BincamError
from bincam.runtime.engine import Engine

ENGINES = ("auto", "torch", "ort", "trt")


def _is_torch_module(model) -> bool:
    """A torch net (checked without importing torch: a net exists only once torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _exported(model, layer: str | None, cache: Path | None) -> bytes:
    """The gradient graph of a net or checkpoint folder at ``layer`` (default: the net's own),
    kept in ``cache`` per checkpoint digest and layer."""
    from bincam.checkpoint import load_checkpoint
    from bincam.export.model import export_checkpoint, save_onnx

    net = load_checkpoint(model) if isinstance(model, (str, Path)) else model
    if cache is None or not isinstance(model, (str, Path)):
        return export_checkpoint(net, layer).SerializeToString()
    folder = checkpoint_folder(model)
    digest = hashlib.sha256((folder / CARD).read_bytes() + (folder / WEIGHTS).read_bytes() +
                            (layer or net.default_cam_layer).encode())
    path = Path(cache) / f"{folder.name}-{digest.hexdigest()[:16]}.onnx"
    if not path.is_file():
        save_onnx(export_checkpoint(net, layer), path)
    return path.read_bytes()


FOREIGN_OPTIONS = ("outputs", "tokens", "names", "input_size")  # a net of the user's own
OPTIONS = {"torch": {"closed_form"}, "ort": {"optimize", "spin"},
           "trt": {"max_batch", "opt_batch", "cache", "cuda_graphs"}}


def _checkpoint_path(model) -> bool:
    """A checkpoint folder, or a file inside one (``model.safetensors``, ``card.json``)."""
    path = Path(model)
    return is_checkpoint(path) or (path.is_file() and path.name in (CARD, WEIGHTS)
                                   and is_checkpoint(path.parent))


def resolve_engine(model, engine: str = "auto") -> str:
    """The engine kind ``open_engine`` will use for ``model`` (checked without opening anything):
    a clear error for an unknown kind, a missing file or a torch engine asked to run ONNX."""
    if engine not in ENGINES:
        raise BincamError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    is_net = not isinstance(model, (str, Path, bytes)) and _is_torch_module(model)
    if not isinstance(model, (str, Path, bytes)) and not is_net:
        raise BincamError(f"a model is a checkpoint folder, an ONNX file (or its bytes) or a torch "
                          f"net, not a {type(model).__name__}")
    is_card = isinstance(model, (str, Path)) and _checkpoint_path(model)
    if isinstance(model, (str, Path)) and not is_card:
        if not Path(model).exists():
            raise BincamError(f"model {model} does not exist")
        if Path(model).is_dir():
            raise BincamError(f"{model} is not a checkpoint folder (no {CARD}); give a "
                              "checkpoint folder or an exported .onnx file")
    if engine == "auto":
        return "torch" if is_net or is_card else "ort"
    if engine == "torch" and not (is_net or is_card):
        raise BincamError(f"the torch engine needs a checkpoint folder; "
                          f"{model if isinstance(model, (str, Path)) else 'the model'} is an ONNX "
                          "file: use --engine ort (or trt)")
    return engine


def open_engine(model, engine: str = "auto", device: str | None = None,
                threads: int | None = None, layer: str | None = None, onnx=None,
                export_cache: str | Path | None = None, **options) -> Engine:
    """An engine for ``model`` (see the module's docstring); close it, or use ``with``.
    ``threads``: intra-op threads of the torch and ort engines; ``onnx``: the exported file (path
    or bytes) of a net or checkpoint, which ort and trt then run instead of exporting it."""
    engine = resolve_engine(model, engine)
    foreign = {k: options.pop(k) for k in FOREIGN_OPTIONS if k in options}
    foreign = {k: v for k, v in foreign.items() if v is not None}
    if _is_torch_module(model) and not isinstance(model, bytes):
        model, layer = _as_bincam_net(model, layer, foreign)
    elif foreign:
        raise BincamError(f"{', '.join(foreign)} only apply to a torch model of your own")
    unknown = sorted(set(options) - OPTIONS[engine])
    if unknown:
        raise BincamError(f"the {engine} engine takes no option {', '.join(unknown)}; its "
                          f"options: {', '.join(sorted(OPTIONS[engine])) or 'none'}")
    if engine == "torch":
        from bincam.runtime.torch_engine import TorchEngine

        if isinstance(model, (str, Path)):
            from bincam.checkpoint import load_checkpoint

            model = load_checkpoint(model, device or "cpu")
        return TorchEngine(model, device, layer, threads=threads, **options)
    exported = not isinstance(model, bytes) and (not isinstance(model, (str, Path))
                                                 or _checkpoint_path(model))
    if onnx is None and exported:
        onnx, layer = _exported(model, layer, export_cache), None  # exported at that layer
    onnx = model if onnx is None else onnx
    if engine == "ort":
        from bincam.runtime.ort_engine import OrtEngine

        opened = OrtEngine(onnx, device=device or "cpu", threads=threads, **options)
    else:
        from bincam.runtime.trt_engine import TrtEngine

        # TensorRT runs on a GPU whatever the other engines of a run use (--device cpu)
        opened = TrtEngine(onnx, device=device if str(device).startswith("cuda") else "cuda",
                           **options)
    if layer and layer != opened.info.target_layer:
        opened.close()
        raise BincamError(f"{model if isinstance(model, (str, Path)) else 'the model'} was "
                          f"exported for layer {opened.info.target_layer!r}; export again for "
                          "another layer")
    return opened


def _as_bincam_net(net, layer, foreign: dict):
    """A bincam net and its layer name: a net of the user's own wrapped at ``layer``; a bincam
    net's layer given as its module turned into its name."""
    from bincam.nets.wrapped import wrap_classifier

    wrapped = wrap_classifier(net, layer, **foreign)
    if wrapped is not net:
        return wrapped, wrapped.default_cam_layer
    if layer is not None and not isinstance(layer, str):
        found = [name for name, path in net.cam_layers.items()
                 if net.get_submodule(path) is layer]
        if not found:
            raise BincamError(f"that module is not a CAM layer of this net; its layers: "
                              f"{', '.join(net.cam_layers)}")
        layer = found[0]
    return net, layer


def explain(model, images, method: str = "gradcam", mode: str = "predicted", attributes=None,
            layer=None, closed_form: bool | None = None, **foreign):
    """Binary CAMs of ``images`` for the selected attributes (default: all) from one forward:
    ``open_engine(model)`` (a net or checkpoint: the torch engine), then ``explain``.
    ``foreign``: ``outputs``, ``tokens``, ``names``, ``input_size`` for a net of your own."""
    options = {} if closed_form is None else {"closed_form": closed_form}
    options.update(foreign)
    with open_engine(model, layer=layer, **options) as engine:
        return engine.explain(images, method, mode, attributes)


__all__ = ["ENGINES", "Engine", "explain", "open_engine", "resolve_engine"]
