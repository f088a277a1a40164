"""Import the authors' AFFACT weights (whole pickled MMdnn ``KitModel`` modules) without running code.

The released ``.pth`` files are ``torch.save(model)`` pickles, not state dicts. Loading them with
``torch.load`` would execute whatever the pickle asks for. Here a restricted unpickler admits only:
tensor storages and the functions that rebuild tensors and parameters, ``OrderedDict`` and ``set``,
and network layers (``torch.nn.modules.*`` and a class named ``KitModel``), which become inert
records of their attributes — no class of the file is ever instantiated. Anything else (``os.system``,
``builtins.eval``, …) stops the import with a message. Both of torch's formats are read: the zip
archive (torch ≥ 1.6) and the legacy stream of pickles.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch

from bincam.attributes import ATTRIBUTES, TRAIN_POSITIVE_SHARE
from bincam.checkpoint import ModelCard, card_for, save_checkpoint
from bincam.errors import BincamError
from bincam.nets.affact import AFFACT

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
CELEBA_TRAIN_SIZE = 162_770


class LayerRecord:
    """Inert stand-in for a pickled ``nn.Module``: the unpickler only fills its ``__dict__``."""


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)  # a view: legacy files fill storages later


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals; ``storage`` feeds persistent ids."""

    def __init__(self, file, source: str, storage: Callable[[tuple], torch.Tensor]):
        super().__init__(file)
        self.source = source
        self.storage = storage

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # protocol-2 spelling
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if name == "KitModel" or module.startswith("torch.nn.modules."):
            return LayerRecord
        raise BincamError(f"{self.source} refused: the pickle asks for {module}.{name}, which is "
                          "neither a tensor nor a network layer; it may run code when loaded with "
                          "torch.load, so do not load it")

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and pid[0] == "module" and pid[1] is LayerRecord:
            return LayerRecord  # legacy format: a module class with its source, for checks only
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise BincamError(f"{self.source} refused: unexpected persistent id {pid!r:.60}")
        return self.storage(pid)


def read_pickled_module(path: Path | str) -> LayerRecord:
    """Read a whole pickled module (zip or legacy format) as a tree of ``LayerRecord``s."""
    path = Path(path)
    if not path.is_file():
        raise BincamError(f"weight file {path} does not exist")
    data = path.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        root = _read_zip(data, str(path))
    else:
        root = _read_legacy(data, str(path))
    if not isinstance(root, LayerRecord):
        raise BincamError(f"{path} holds a {type(root).__name__}, not a pickled network module")
    return root


def _read_zip(data: bytes, source: str) -> Any:
    """torch's zip format; a damaged archive (bad member, missing or odd-sized storage, broken
    pickle stream) is one ``BincamError`` naming the file."""
    try:
        return _unpickle_zip(data, source)
    except BincamError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, pickle.UnpicklingError,
            RuntimeError, TypeError, AttributeError) as exc:
        raise BincamError(f"{source} is a damaged torch zip checkpoint "
                          f"({exc.__class__.__name__}: {str(exc)[:120]})") from None


def _unpickle_zip(data: bytes, source: str) -> Any:
    archive = zipfile.ZipFile(io.BytesIO(data))
    pkl = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
    if pkl is None:
        raise BincamError(f"{source} is a zip file without data.pkl, not a torch checkpoint")
    prefix = pkl[: -len("data.pkl")]
    cache: dict[str, torch.Tensor] = {}

    def storage(pid: tuple) -> torch.Tensor:
        _, stype, key, _location, _numel = pid[:5]
        if key not in cache:
            raw = bytearray(archive.read(f"{prefix}data/{key}"))
            if len(raw) % stype.dtype.itemsize:
                raise BincamError(f"{source}: storage {key} holds {len(raw)} bytes, not a whole "
                                  f"number of {stype.dtype} values; the file is damaged")
            cache[key] = torch.frombuffer(raw, dtype=stype.dtype) if raw else torch.empty(
                0, dtype=stype.dtype)
        return cache[key]

    return RestrictedUnpickler(io.BytesIO(archive.read(pkl)), source, storage).load()


def _read_legacy(data: bytes, source: str) -> Any:
    """torch's pre-1.6 format: magic, protocol, sys info, the object, storage keys, raw storages."""
    f = io.BytesIO(data)
    refuse = RestrictedUnpickler(f, source, lambda pid: None)
    try:
        magic = refuse.load()
    except (pickle.UnpicklingError, EOFError, ValueError):
        raise BincamError(f"{source} is neither a torch zip checkpoint nor a legacy torch pickle") \
            from None
    if magic != _LEGACY_MAGIC:
        raise BincamError(f"{source} is not a torch checkpoint (bad magic number)")
    RestrictedUnpickler(f, source, lambda pid: None).load()  # protocol version
    RestrictedUnpickler(f, source, lambda pid: None).load()  # sys info
    storages: dict[str, torch.Tensor] = {}

    def storage(pid: tuple) -> torch.Tensor:
        _, stype, key, _location, numel = pid[:5]
        if key not in storages:
            storages[key] = torch.empty(numel, dtype=stype.dtype)
        base = storages[key]
        view = pid[5] if len(pid) > 5 else None
        if view is not None:
            _view_key, offset, view_size = view
            return base[offset:offset + view_size]
        return base

    obj = RestrictedUnpickler(f, source, storage).load()
    keys = RestrictedUnpickler(f, source, lambda pid: None).load()
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        target = storages[key]
        nbytes = numel * target.element_size()
        raw = bytearray(f.read(nbytes))
        if len(raw) != nbytes or numel != target.numel():
            raise BincamError(f"{source} is truncated (storage {key})")
        target.copy_(torch.frombuffer(raw, dtype=target.dtype))
    return obj


def record_state_dict(record: LayerRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a record tree into a state dict (``child.param`` → tensor)."""
    state: dict[str, torch.Tensor] = {}
    attrs = record.__dict__
    for group in ("_parameters", "_buffers"):
        for name, value in (attrs.get(group) or {}).items():
            if value is not None:
                state[prefix + name] = value
    for name, child in (attrs.get("_modules") or {}).items():
        if isinstance(child, LayerRecord):
            state.update(record_state_dict(child, f"{prefix}{name}."))
    return state


def affact_state_dict(state: dict[str, torch.Tensor], model: AFFACT) -> dict[str, torch.Tensor]:
    """Fit a KitModel state dict onto ``model``: conv biases that our Caffe layout lacks are folded
    into the following BatchNorm (``BN(x + b)`` equals BN with running mean ``μ − b``)."""
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in target:
            if target[key].shape != value.shape:
                raise BincamError(f"tensor {key} has shape {tuple(value.shape)}, AFFACT expects "
                                  f"{tuple(target[key].shape)}")
            out[key] = value.to(target[key].dtype)
    for key, value in state.items():
        if key in target:
            continue
        layer, _, param = key.rpartition(".")
        bn_key = f"bn{layer[3:]}.running_mean" if layer.startswith("res") else None
        if param == "bias" and bn_key in target:
            out[bn_key] = out[bn_key] - value.to(out[bn_key].dtype)
        else:
            raise BincamError(f"the file has a tensor {key} that the AFFACT network does not have")
    missing = [k for k in target if k not in out and not k.endswith("num_batches_tracked")]
    if missing:
        raise BincamError(f"the file lacks {len(missing)} AFFACT tensor(s), e.g. {missing[0]}")
    for k in target:
        out.setdefault(k, target[k])
    return out


def convert_affact(weights: Path | str, out: Path | str,
                   attributes: list[str] | None = None) -> Path:
    """Convert a pickled AFFACT ``KitModel`` into a bincam checkpoint folder at ``out``."""
    state = record_state_dict(read_pickled_module(weights))
    head = state.get("attributes_1.weight")
    if head is None:
        raise BincamError(f"{weights} has no attributes_1 layer: not an AFFACT KitModel")
    k = head.shape[0]
    attributes = list(attributes or (ATTRIBUTES if k == len(ATTRIBUTES) else []))
    if len(attributes) != k:
        raise BincamError(f"the model has {k} outputs; name them with --attributes")
    model = AFFACT(num_outputs=k)
    model.load_state_dict(affact_state_dict(state, model))
    counts = {}
    if attributes == list(ATTRIBUTES):  # CelebA training counts, from the published shares
        pos = [int(round(TRAIN_POSITIVE_SHARE[a] * CELEBA_TRAIN_SIZE)) for a in attributes]
        counts = {"positive_counts": pos, "negative_counts": [CELEBA_TRAIN_SIZE - p for p in pos]}
    card = card_for(model, attributes, image_size=224, **counts,
                    training={"source": f"converted from {Path(weights).name} (AFFACT, MMdnn)"})
    return save_checkpoint(model, card, out)


__all__ = ["ModelCard", "convert_affact", "read_pickled_module", "record_state_dict"]
