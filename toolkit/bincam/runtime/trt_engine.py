"""The TensorRT engine (extra ``trt``; imported lazily, no torch): a plan built from an exported
bincam ONNX file, cached, and run through cuda-python with device buffers that the fused
epilogue kernel reads in place.

- Build: ``OnnxParser`` into a strongly typed network (precision comes from the file's own types:
  TensorRT 11 has no other mode; TensorRT 10 gets ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``),
  one optimisation profile for the dynamic batch (min 1, opt, max), a persistent timing cache,
  ``build_serialized_network``.
- Cache: ``<cache>/trt/<key>.plan`` + ``.json``; the key hashes the ONNX bytes, the TensorRT
  version, the GPU name and compute capability, the precision and the profile. Loading checks
  the JSON beside the plan against the current key and refuses a stale or foreign plan.
- Run: ``set_input_shape``, ``set_tensor_address`` for every I/O tensor, ``execute_async_v3`` on
  a stream; optional CUDA-graph capture and replay per batch size. ``fused`` launches the fused
  epilogue kernel on the same stream, reading the output buffers in place.

API used (TensorRT 10/11 Python): Logger, Builder.create_network / create_builder_config /
create_optimization_profile / build_serialized_network, OnnxParser.parse / num_errors / get_error,
IBuilderConfig.add_optimization_profile / create_timing_cache / set_timing_cache /
get_timing_cache, ITimingCache.serialize, IOptimizationProfile.set_shape, Runtime.
deserialize_cuda_engine, ICudaEngine.num_io_tensors / get_tensor_name / get_tensor_mode /
get_tensor_dtype, IExecutionContext.set_input_shape / get_tensor_shape / set_tensor_address /
execute_async_v3, nptype.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from bincam.errors import BincamError
from bincam.export.metadata import read_metadata
from bincam.runtime.cuda_epilogue import cache_dir as kernel_cache_dir


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BincamError("the TensorRT engine needs TensorRT: pip install 'bincam[trt]' on a "
                          "machine with an NVIDIA GPU") from None
    return trt


def _cuda_check(result):
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


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_plan(onnx_bytes: bytes, profile: tuple[int, int, int], image_size: int,
               timing_cache: Path | None = None, workspace_bytes: int = 4 << 30) -> bytes:
    """A serialized engine for batch sizes ``profile = (min, opt, max)``."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BincamError(f"TensorRT cannot parse the ONNX model: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    opt = builder.create_optimization_profile()
    name = network.get_input(0).name
    lo, mid, hi = profile
    opt.set_shape(name, (lo, 3, image_size, image_size), (mid, 3, image_size, image_size),
                  (hi, 3, image_size, image_size))
    config.add_optimization_profile(opt)
    blob = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BincamError("TensorRT could not build an engine from this model (see its log)")
    if timing_cache:
        _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def cached_plan(onnx_bytes: bytes, precision: str, profile: tuple[int, int, int],
                image_size: int, cache: Path | None = None, device: int = 0) -> tuple[bytes, dict]:
    """The plan for this model, GPU, TensorRT version, precision and profile: from the cache if
    its record matches, else built and stored."""
    trt = _trt()
    key = plan_key(onnx_bytes, trt.__version__, gpu_identity(device), precision, profile)
    root = (cache or kernel_cache_dir().parent) / "trt"
    plan_path, record_path = root / f"{key['key']}.plan", root / f"{key['key']}.json"
    if plan_path.is_file() and record_path.is_file():
        check_plan_record(json.loads(record_path.read_text()), key, plan_path)
        return plan_path.read_bytes(), key
    plan = build_plan(onnx_bytes, profile, image_size, timing_cache=root / "timing.cache")
    _atomic_write(plan_path, plan)
    _atomic_write(record_path, json.dumps(key, sort_keys=True).encode())
    return plan, key


class TrtEngine:
    """Logits, activations and gradients (dense or factored) from a TensorRT plan, in device
    buffers (``self.outputs``: name → (pointer, shape, dtype)) or copied to the host by ``run``."""

    def __init__(self, model: str | Path | bytes, max_batch: int = 32, opt_batch: int = 8,
                 cache: Path | None = None, device: int = 0, cuda_graphs: bool = False):
        import onnx

        trt = _trt()
        from cuda.bindings import runtime

        self.runtime_api = runtime
        source = "the model" if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes):
            if not Path(model).is_file():
                raise BincamError(f"ONNX model {model} does not exist")
            model = Path(model).read_bytes()
        proto = onnx.load_model_from_string(model)
        self.info = read_metadata({p.key: p.value for p in proto.metadata_props}, source)
        _cuda_check(runtime.cudaSetDevice(device))
        profile = (1, min(opt_batch, max_batch), max_batch)
        plan, self.key = cached_plan(model, self.info.precision, profile, self.info.image_size,
                                     cache, device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BincamError("TensorRT refused the cached plan; delete the cache entry "
                              f"{self.key['key']} to rebuild")
        self.context = self.engine.create_execution_context()
        self.stream = _cuda_check(runtime.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names
                               if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = [n for n in names if n != self.input_name]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.max_batch, self.cuda_graphs = max_batch, cuda_graphs
        self.buffers: dict[str, tuple[int, int]] = {}  # name → (pointer, bytes)
        self.graphs: dict[int, object] = {}
        self.outputs: dict[str, tuple[int, tuple, np.dtype]] = {}

    @property
    def attributes(self) -> list[str]:
        return self.info.attributes

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _cuda_check(self.runtime_api.cudaFree(ptr))
            ptr = _cuda_check(self.runtime_api.cudaMalloc(nbytes))
            self.buffers[name] = (ptr, nbytes)
            self.graphs.clear()  # captured graphs hold the old addresses
        return ptr

    def enqueue(self, images: np.ndarray) -> None:
        """Copy a float32 batch ``[B,3,S,S]`` in and run the engine on its stream (no sync)."""
        rt = self.runtime_api
        x = np.ascontiguousarray(images, dtype=np.float32)
        b = len(x)
        if not 1 <= b <= self.max_batch:
            raise BincamError(f"batch {b} is outside this engine's profile 1..{self.max_batch}")
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        ptr = self._buffer(self.input_name, x.nbytes)
        _cuda_check(rt.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes,
                                       rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        self.context.set_tensor_address(self.input_name, ptr)
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * self.dtypes[name].itemsize
            out = self._buffer(name, nbytes)
            self.context.set_tensor_address(name, out)
            self.outputs[name] = (out, shape, self.dtypes[name])
        if self.cuda_graphs:
            self._replay(b)
        elif not self.context.execute_async_v3(int(self.stream)):
            raise BincamError("TensorRT execution failed")

    def _replay(self, batch: int) -> None:
        rt = self.runtime_api
        if batch not in self.graphs:
            self.context.execute_async_v3(int(self.stream))  # a first run outside the capture
            _cuda_check(rt.cudaStreamBeginCapture(
                self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            self.context.execute_async_v3(int(self.stream))
            graph = _cuda_check(rt.cudaStreamEndCapture(self.stream))
            self.graphs[batch] = _cuda_check(rt.cudaGraphInstantiate(graph, 0))
        _cuda_check(rt.cudaGraphLaunch(self.graphs[batch], self.stream))

    def run(self, images) -> dict[str, np.ndarray]:
        """The same tensors as ``OrtEngine.run``, copied to the host."""
        from bincam.runtime.ort_engine import check_batch

        rt = self.runtime_api
        self.enqueue(check_batch(images, self.info.image_size))
        out = {}
        for name, (ptr, shape, dtype) in self.outputs.items():
            host = np.empty(shape, dtype=dtype)
            _cuda_check(rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes,
                                           rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
            out[name] = host
        _cuda_check(rt.cudaStreamSynchronize(self.stream))
        return {n: (v.astype(np.float32) if v.dtype != np.float32 else v) for n, v in out.items()}

    def explain(self, images, method: str = "gradcam", mode: str = "predicted", attributes=None):
        from bincam.runtime.explanation_np import explain_outputs

        return explain_outputs(self.info, self.run(images), np.shape(images)[-1], method, mode,
                               attributes)

    def _device_masks(self, size: int) -> int:
        """The attributes' masks ``uint8 [K,S,S]`` on the device, uploaded once per size."""
        from bincam.attributes import attribute_masks

        name = f"masks{size}"
        if name not in self.buffers:
            mask = np.ascontiguousarray(attribute_masks(self.attributes, size), dtype=np.uint8)
            ptr = self._buffer(name, mask.nbytes)
            _cuda_check(self.runtime_api.cudaMemcpy(ptr, mask.ctypes.data, mask.nbytes,
                        self.runtime_api.cudaMemcpyKind.cudaMemcpyHostToDevice))
        return self.buffers[name][0]

    def fused(self, images, method: str = "gradcam", mode: str = "predicted",
              size: int | None = None, maps: str | None = "f32") -> dict[str, np.ndarray]:
        """Engine and fused epilogue kernel on one stream, the kernel reading the engine's output
        buffers in place: ``logits [B,K]``, ``pe [B,K]`` and (``maps`` = f32 | f16 | u8, or None)
        the final maps ``[B,K,S,S]``, copied to the host once at the end."""
        from bincam.runtime.cuda_epilogue import FusedEpilogue
        from bincam.runtime.ort_engine import check_batch

        rt = self.runtime_api
        size = size or self.info.image_size
        if maps not in (None, "f32", "f16", "u8"):
            raise BincamError(f"maps must be f32, f16, u8 or None, got {maps!r}")
        x = check_batch(images, self.info.image_size)
        self.enqueue(x)
        if not hasattr(self, "_kernel"):
            self._kernel = FusedEpilogue()
        k = len(self.attributes)
        mask_ptr = self._device_masks(size)
        acts, (_, c, h, w) = self.outputs["activations"][0], self.outputs["activations"][1]
        grads = self.outputs.get("gradients", self.outputs.get("channel_weights"))[0]
        b = len(x)
        item = {"f32": 4, "f16": 2, "u8": 1}.get(maps, 0)
        maps_ptr = self._buffer("fused_maps", max(1, b * k * size * size * item))
        energy_ptr = self._buffer("fused_energy", b * k * 2 * 4)
        self._kernel.launch(acts=acts, grads=grads, logits=self.outputs["logits"][0],
                            shape=(b, k, c, h, w), size=(size, size), method=method,
                            layout=self.info.gradient_layout, mode=mode,
                            mask_positive=self.info.mask_positive, masks=mask_ptr,
                            maps_f32=maps_ptr if maps == "f32" else 0,
                            maps_f16=maps_ptr if maps == "f16" else 0,
                            maps_u8=maps_ptr if maps == "u8" else 0, energy=energy_ptr,
                            stream=int(self.stream))
        out = {"logits": np.empty((b, k), np.float32), "energy": np.empty((b, k, 2), np.float32)}
        if maps:
            out["maps"] = np.empty((b, k, size, size),
                                   {"f32": np.float32, "f16": np.float16, "u8": np.uint8}[maps])
        for name, ptr in (("logits", self.outputs["logits"][0]), ("energy", energy_ptr),
                          ("maps", maps_ptr)):
            if name in out:
                _cuda_check(rt.cudaMemcpyAsync(out[name].ctypes.data, ptr, out[name].nbytes,
                                               rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                               self.stream))
        _cuda_check(rt.cudaStreamSynchronize(self.stream))
        inside, total = out.pop("energy").astype(np.float64).transpose(2, 0, 1)
        out["pe"] = np.where(total > 0, inside / np.where(total > 0, total, 1), 0.0)
        return out

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.runtime_api.cudaFree(ptr)
        self.buffers.clear()
