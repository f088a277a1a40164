"""TensorRT plans of exported bincam ONNX files: building and caching (execution is
``trt_engine``'s). TensorRT and cuda-python are imported lazily; no torch.

- Build: ``OnnxParser`` into a strongly typed network (precision comes from the file's own types:
  TensorRT 11 has no other mode; TensorRT 10 gets ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``),
  one optimisation profile: the network input's own shape with its batch axis over
  ``(min, opt, max)``, a timing cache per TensorRT version and GPU, ``build_serialized_network``.
- Cache: ``<cache>/trt/<key>.plan`` + ``.json``; the key hashes the ONNX bytes, the TensorRT
  version, the GPU name and compute capability, the precision and the profile. Loading checks
  the JSON beside the plan against the current key and refuses a stale or foreign plan. Timing
  caches: ``<cache>/trt/timing-<TensorRT version>-<GPU>-sm<capability>.cache``.

API used (TensorRT 10/11 Python): Logger, Builder.create_network / create_builder_config /
create_optimization_profile / build_serialized_network, OnnxParser.parse / num_errors / get_error,
INetworkDefinition.num_inputs / get_input, ITensor.name / shape, IBuilderConfig.
set_memory_pool_limit / add_optimization_profile / create_timing_cache / set_timing_cache /
get_timing_cache, ITimingCache.serialize, IOptimizationProfile.set_shape; cuda-python
``cuda.bindings.runtime.cudaGetDeviceProperties``.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from functools import lru_cache
from pathlib import Path

from bincam.errors import BincamError
from bincam.files import write_atomic
from bincam.gpu.launcher import cache_dir as kernel_cache_dir


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BincamError("the TensorRT engine needs TensorRT: pip install 'bincam[trt]' on a "
                          "machine with an NVIDIA GPU") from None
    return trt


@lru_cache(maxsize=1)
def logger():
    """The one TensorRT logger of this process (builders and runtimes share it)."""
    trt = _trt()
    return trt.Logger(trt.Logger.WARNING)


def _cuda_check(result):
    """The values of a ``cuda.bindings.runtime`` call; a ``BincamError`` on any CUDA error."""
    from cuda.bindings import runtime

    err, *values = result
    if err != runtime.cudaError_t.cudaSuccess:
        raise BincamError(f"CUDA runtime call failed: {err.name}")
    return values[0] if len(values) == 1 else (values or None)


def gpu_identity(device: int = 0) -> dict:
    from cuda.bindings import runtime

    props = _cuda_check(runtime.cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace").rstrip("\0") if isinstance(props.name, bytes) \
        else str(props.name)
    return {"gpu": name, "compute_capability": f"{props.major}.{props.minor}"}


def plan_key(onnx_bytes: bytes, trt_version: str, gpu: dict, precision: str,
             profile: tuple[int, int, int]) -> dict:
    """Everything a plan depends on; its hash names the cache file."""
    fields = {"onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(), "tensorrt": trt_version,
              **gpu, "precision": precision, "profile": list(profile)}
    fields["key"] = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]
    return fields


def check_plan_record(record: dict, key: dict, plan_path: Path) -> None:
    """Refuse a cached plan whose record differs from what this setup would build."""
    if record != key:
        differs = sorted(f for f in key if record.get(f) != key[f] and f != "key")
        raise BincamError(f"cached TensorRT plan {plan_path} does not match this setup "
                          f"({', '.join(differs) or 'record'} differ: built for "
                          f"{record.get('gpu')}, TensorRT {record.get('tensorrt')}); delete it "
                          "to rebuild")


def timing_cache_path(root: Path, trt_version: str, gpu: dict) -> Path:
    """The timing cache of one TensorRT version on one GPU model (tactic timings are valid
    for nothing else)."""
    name = f"{trt_version}-{gpu['gpu']}-sm{gpu['compute_capability']}"
    return Path(root) / f"timing-{re.sub(r'[^A-Za-z0-9.]+', '_', name).strip('_')}.cache"


def _input_profile(network, profile: tuple[int, int, int]) -> tuple[str, list[tuple[int, ...]]]:
    """The network input's name and its (min, opt, max) shapes: its own shape, the batch axis
    replaced by each profile size."""
    if network.num_inputs != 1:
        raise BincamError(f"a bincam model has one input; this one has {network.num_inputs}")
    tensor = network.get_input(0)
    shape = tuple(tensor.shape)
    if not shape or any(d < 0 for d in shape[1:]):
        raise BincamError(f"input {tensor.name} has shape {list(shape)}: only its batch axis may "
                          "be dynamic; export the model again")
    return tensor.name, [(n, *shape[1:]) for n in profile]


def build_plan(onnx_bytes: bytes, profile: tuple[int, int, int],
               timing_cache: Path | None = None, workspace_bytes: int = 4 << 30) -> bytes:
    """A serialized engine for batch sizes ``profile = (min, opt, max)`` on the current device;
    ``timing_cache`` is read if present and written back after the build (a failed write
    is a warning: the plan is kept)."""
    trt = _trt()
    builder = trt.Builder(logger())
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger())
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BincamError(f"TensorRT cannot parse the ONNX model: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    name, shapes = _input_profile(network, profile)
    opt = builder.create_optimization_profile()
    opt.set_shape(name, *shapes)
    if config.add_optimization_profile(opt) < 0:
        raise BincamError(f"TensorRT refused the optimisation profile {shapes} of input {name}")
    blob = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is None or not config.set_timing_cache(cache, False):
        raise BincamError("TensorRT refused the timing cache"
                          + (f" {timing_cache}; delete it to start a new one" if blob else ""))
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BincamError("TensorRT could not build an engine from this model (see its log)")
    updated = config.get_timing_cache() if timing_cache else None
    if updated is not None:  # None: nothing to keep; the plan itself is fine
        try:  # the timings only speed up later builds: losing them must not lose the plan
            write_atomic(timing_cache, bytes(updated.serialize()))
        except OSError as e:
            warnings.warn(f"the TensorRT timing cache {timing_cache} was not saved ({e}); the "
                          "next build on this GPU times its tactics again", stacklevel=2)
    return bytes(plan)


def cache_root(cache: str | Path | None = None) -> Path:
    """``<cache>/trt``; by default beside the kernel cache (``$BINCAM_CACHE`` or
    ``~/.cache/bincam``)."""
    return Path(cache or kernel_cache_dir().parent) / "trt"


def cached_plan(onnx_bytes: bytes, precision: str, profile: tuple[int, int, int],
                cache: str | Path | None = None, device: int = 0) -> tuple[bytes, dict]:
    """``(plan, key)`` for this model, GPU, TensorRT version, precision and profile: from the
    cache if its record matches, else built on ``device`` (which must be the current device)
    and stored."""
    trt = _trt()
    gpu = gpu_identity(device)
    key = plan_key(onnx_bytes, trt.__version__, gpu, precision, profile)
    root = cache_root(cache)
    plan_path, record_path = root / f"{key['key']}.plan", root / f"{key['key']}.json"
    if plan_path.is_file() and record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except ValueError:
            raise BincamError(f"the record {record_path} of a cached TensorRT plan is unreadable; "
                              "delete it to rebuild") from None
        check_plan_record(record, key, plan_path)
        return plan_path.read_bytes(), key
    plan = build_plan(onnx_bytes, profile, timing_cache_path(root, trt.__version__, gpu))
    write_atomic(plan_path, plan)
    write_atomic(record_path, json.dumps(key, sort_keys=True).encode())
    return plan, key
