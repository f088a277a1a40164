"""The TensorRT engine (extra ``trt``; imported lazily, no torch): plans of an exported bincam
ONNX file (built and cached by ``trt_plan``) run through cuda-python, with device buffers that
the fused epilogue kernel (``gpu.launcher``) reads in place.

- Run: ``set_input_shape``, ``set_tensor_address`` for every I/O tensor, ``execute_async_v3`` on
  the engine's stream (all three checked); optional CUDA-graph capture and replay per batch
  size, each batch size on an execution context of its own (a graph replays the state of the
  context it was captured on: after ``set_input_shape`` moved that context to another batch,
  it would not be valid). Host copies go through page-locked staging buffers, kept per tensor and reused.
- Outputs are checked, not assumed: float32 or float16 each, row major (LINEAR), fully shaped,
  and ``logits [B,K]``, ``activations [B,C,h,w]``, ``gradients [B,K,C,h,w]`` or
  ``channel_weights [K,C]`` as the file's ``ModelInfo`` implies.
- ``run_forward``: a second plan, of the file's logits-only subgraph (``onnx.utils.Extractor``),
  built on first use. ``fused``: the fused kernel on the engine's stream after the engine.
- Every call makes the engine's device current and restores the caller's afterwards.

API used (TensorRT 10/11 Python): Runtime.deserialize_cuda_engine, ICudaEngine.num_io_tensors /
get_tensor_name / get_tensor_mode / get_tensor_dtype / get_tensor_format /
create_execution_context,
IExecutionContext.set_input_shape / get_tensor_shape / set_tensor_address / execute_async_v3;
``cuda.bindings.runtime``: cudaGetDevice / cudaSetDevice, cudaStreamCreate / Synchronize /
Destroy, cudaMalloc / cudaFree, cudaMallocHost / cudaFreeHost, cudaMemcpy(Async),
cudaStreamBeginCapture / EndCapture, cudaGraphInstantiate / Launch / ExecDestroy / Destroy.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bincam.core.methods import cam_method
from bincam.core.model_info import load_onnx, onnx_info
from bincam.core.modes import check_mode
from bincam.errors import BincamError
from bincam.runtime.engine import Engine, select
from bincam.runtime.trt_plan import _cuda_check, _trt, cached_plan, logger

MAP_TYPES = {"f32": np.float32, "f16": np.float16, "u8": np.uint8}


def device_index(device: str) -> int:
    """``"cuda"`` → 0, ``"cuda:N"`` → N."""
    name, _, index = str(device).partition(":")
    if name != "cuda" or not (index.isdigit() or not index):
        raise BincamError(f"the TensorRT engine runs on cuda or cuda:N, got {device!r}")
    return int(index or 0)


class _Plan:
    """One deserialized plan on a given stream: its execution context, device buffers,
    page-locked host staging buffers and (optional) CUDA graphs per batch size."""

    def __init__(self, plan: bytes, stream, cuda_graphs: bool):
        from cuda.bindings import runtime

        trt = _trt()
        self.rt, self.stream, self.cuda_graphs = runtime, stream, cuda_graphs
        self.device_buffers: dict[str, tuple[int, int]] = {}  # name → (pointer, bytes)
        self.host_buffers: dict[str, tuple[int, int]] = {}
        self.graphs: dict[int, tuple] = {}                    # batch → (graph, instance)
        self.graph_contexts: dict[int, object] = {}           # batch → its own context
        self.outputs: dict[str, tuple[int, tuple, np.dtype]] = {}  # → (pointer, shape, dtype)
        self.runtime = trt.Runtime(logger())
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BincamError("TensorRT refused the cached plan; delete the cache entry to "
                              "rebuild it")
        self.context = self._new_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise BincamError(f"the plan has inputs {inputs}; a bincam model has one")
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n != self.input_name]
        types = {trt.DataType.FLOAT: np.dtype(np.float32), trt.DataType.HALF: np.dtype(np.float16),
                 trt.DataType.UINT8: np.dtype(np.uint8)}  # uint8: an export --raw-pixels input
        self.dtypes = {}
        for name in names:
            dtype = types.get(self.engine.get_tensor_dtype(name))
            allowed = (np.float32, np.uint8) if name == self.input_name else (np.float32,
                                                                               np.float16)
            if dtype not in allowed:
                raise BincamError(f"tensor {name} of the plan is "
                                  f"{self.engine.get_tensor_dtype(name)}; bincam models take "
                                  "float32 images (or uint8 pixels) and give float32 or float16 "
                                  "outputs")
            self.dtypes[name] = dtype
            tensor_format = self.engine.get_tensor_format(name)
            if tensor_format != trt.TensorFormat.LINEAR:  # bincam reads and writes row major
                raise BincamError(f"tensor {name} of the plan has format {tensor_format}; bincam "
                                  "reads row-major (LINEAR) tensors only: rebuild the plan "
                                  "without allowed_formats")

    def _new_context(self):
        context = self.engine.create_execution_context()
        if context is None:
            raise BincamError("TensorRT could not create an execution context (out of GPU "
                              "memory? see its log); free GPU memory or lower --max-batch")
        return context

    def context_for(self, batch: int):
        """The execution context of ``batch``: with CUDA graphs, one per batch size (created on
        first use; its graph stays valid), else the plan's one context."""
        if not self.cuda_graphs:
            return self.context
        if batch not in self.graph_contexts:
            self.graph_contexts[batch] = self._new_context()
        return self.graph_contexts[batch]

    def _address(self, context, name: str, ptr: int) -> None:
        if not context.set_tensor_address(name, ptr):
            raise BincamError(f"TensorRT refused the device address of tensor {name}")

    def buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes``, reused (grown when too small) per ``name``."""
        ptr, size = self.device_buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _cuda_check(self.rt.cudaFree(ptr))
                if name in self.dtypes:
                    self._drop_graphs()  # captured graphs hold the old I/O addresses
            ptr = _cuda_check(self.rt.cudaMalloc(nbytes))
            self.device_buffers[name] = (ptr, nbytes)
        return ptr

    def staging(self, name: str, shape: tuple, dtype) -> np.ndarray:
        """A page-locked host array of ``shape``, reused (grown when too small) per ``name``."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr, size = self.host_buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _cuda_check(self.rt.cudaFreeHost(ptr))
            ptr = _cuda_check(self.rt.cudaMallocHost(max(nbytes, 1)))
            self.host_buffers[name] = (ptr, max(nbytes, 1))
        raw = np.ctypeslib.as_array((ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr))
        return raw[:nbytes].view(dtype).reshape(shape)

    def enqueue(self, x: np.ndarray) -> dict[str, tuple[int, tuple, np.dtype]]:
        """Copy a float32 batch (uint8 pixels for a raw-pixels file) in and run the plan on the
        stream (no sync); the outputs' ``(pointer, shape, dtype)``."""
        rt = self.rt
        context = self.context_for(len(x))
        if not context.set_input_shape(self.input_name, tuple(x.shape)):
            raise BincamError(f"TensorRT refused input shape {list(x.shape)} for this plan")
        staged = self.staging(self.input_name, x.shape, self.dtypes[self.input_name])
        staged[...] = x
        ptr = self.buffer(self.input_name, x.nbytes)
        _cuda_check(rt.cudaMemcpyAsync(ptr, staged.ctypes.data, x.nbytes,
                                       rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        self._address(context, self.input_name, ptr)
        for name in self.output_names:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BincamError(f"TensorRT left output {name} with shape {list(shape)} for "
                                  f"input shape {list(x.shape)}; export the model again")
            out = self.buffer(name, int(np.prod(shape)) * self.dtypes[name].itemsize)
            self._address(context, name, out)
            self.outputs[name] = (out, shape, self.dtypes[name])
        if self.cuda_graphs:
            self._replay(context, len(x))
        else:
            self._execute(context)
        return self.outputs

    def _execute(self, context) -> None:
        if not context.execute_async_v3(int(self.stream)):
            raise BincamError("TensorRT execution failed (see its log)")

    def _replay(self, context, batch: int) -> None:
        rt = self.rt
        if batch not in self.graphs:
            self._execute(context)  # a first run outside the capture
            _cuda_check(rt.cudaStreamBeginCapture(
                self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            try:
                self._execute(context)
            except BaseException:  # end the capture, free what it made, keep this error
                ended = rt.cudaStreamEndCapture(self.stream)
                if ended[0] == rt.cudaError_t.cudaSuccess and int(ended[1]):  # not NULL
                    rt.cudaGraphDestroy(ended[1])
                raise
            graph = _cuda_check(rt.cudaStreamEndCapture(self.stream))
            try:
                self.graphs[batch] = (graph, _cuda_check(rt.cudaGraphInstantiate(graph, 0)))
            except BincamError:
                rt.cudaGraphDestroy(graph)
                raise
        _cuda_check(rt.cudaGraphLaunch(self.graphs[batch][1], self.stream))

    def download(self, items: dict[str, tuple[int, tuple, np.dtype]]) -> dict[str, np.ndarray]:
        """Device arrays ``name → (pointer, shape, dtype)`` copied to the host through the
        staging buffers (one sync); the results are the caller's own arrays."""
        rt = self.rt
        staged = {}
        for name, (ptr, shape, dtype) in items.items():
            staged[name] = self.staging(name, shape, dtype)
            _cuda_check(rt.cudaMemcpyAsync(staged[name].ctypes.data, ptr, staged[name].nbytes,
                                           rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        _cuda_check(rt.cudaStreamSynchronize(self.stream))
        return {name: host.copy() for name, host in staged.items()}

    def _drop_graphs(self) -> None:
        for graph, instance in self.graphs.values():
            self.rt.cudaGraphExecDestroy(instance)
            self.rt.cudaGraphDestroy(graph)
        self.graphs.clear()

    def close(self) -> None:
        """Free graphs and buffers (after the stream's work is done); idempotent."""
        self.rt.cudaStreamSynchronize(self.stream)
        self._drop_graphs()
        for ptr, _ in self.device_buffers.values():
            self.rt.cudaFree(ptr)
        for ptr, _ in self.host_buffers.values():
            self.rt.cudaFreeHost(ptr)
        self.device_buffers.clear(), self.host_buffers.clear(), self.outputs.clear()
        self.graph_contexts.clear()
        self.context = self.engine = None


class TrtEngine(Engine):
    """Logits, activations and gradients (dense or factored) from a TensorRT plan of an exported
    bincam ONNX file; ``fused`` adds the final maps and PE on the GPU."""

    kind = "trt"
    capabilities = frozenset({"fused_epilogue"})

    def __init__(self, model: str | Path | bytes, device: str = "cuda", max_batch: int = 32,
                 opt_batch: int = 8, cache: str | Path | None = None, cuda_graphs: bool = False):
        """``device``: ``cuda`` or ``cuda:N``; ``max_batch``/``opt_batch``: the plan's batch
        profile ``(1, opt, max)``; ``cache``: the plan cache folder (default ``$BINCAM_CACHE``
        or ``~/.cache/bincam``); ``cuda_graphs``: replay each batch size's captured CUDA graph
        instead of enqueueing the plan (each batch size seen gets an execution context of its
        own, with its own activation memory)."""
        self._plan = self._forward = self._kernel = self.stream = None
        _trt()  # a clear error first where TensorRT is missing
        self.device = device_index(device)
        if not 1 <= opt_batch <= max_batch:
            raise BincamError(f"the batch profile needs 1 <= opt_batch <= max_batch; got "
                              f"{opt_batch} and {max_batch}")
        proto, self.model_bytes, self.source = load_onnx(model)
        self.info = onnx_info(proto, self.source)
        del proto
        if self.info.explain:
            raise BincamError(f"{self.source} is an explaining file; bincam's trt engine runs "
                              "gradient files (its own epilogue is the fused kernel): use "
                              "--engine ort, or Triton's tensorrt backend / trtexec for the file")
        from cuda.bindings import runtime

        self.rt, self.cache, self.cuda_graphs = runtime, cache, cuda_graphs
        self.profile = (1, opt_batch, max_batch)
        self.grad_output = ("gradients" if self.info.gradient_layout == "dense"
                            else "channel_weights")
        try:
            with self._on_device():
                plan, self.key = cached_plan(self.model_bytes, self.info.precision, self.profile,
                                             cache, self.device)
                self.stream = _cuda_check(runtime.cudaStreamCreate())
                self._plan = _Plan(plan, self.stream, cuda_graphs)
        except BaseException:
            self.close()
            raise
        missing = {"logits", "activations", self.grad_output} - set(self._plan.output_names)
        if missing:
            self.close()
            raise BincamError(f"{self.source} lacks output(s) {', '.join(sorted(missing))}")

    @contextmanager
    def _on_device(self):
        """The engine's device current in this thread; the caller's restored afterwards."""
        previous = _cuda_check(self.rt.cudaGetDevice())
        if previous != self.device:
            _cuda_check(self.rt.cudaSetDevice(self.device))
        try:
            yield
        finally:
            if previous != self.device:
                self.rt.cudaSetDevice(previous)

    def _batch(self, images) -> np.ndarray:
        if self._plan is None:
            raise BincamError("this TensorRT engine is closed; open a new one")
        x = self.check_images(images)
        if not 1 <= len(x) <= self.profile[2]:
            raise BincamError(f"batch {len(x)} is outside this engine's profile "
                              f"1..{self.profile[2]}")
        return np.ascontiguousarray(x)

    def _checked(self, outputs: dict, b: int) -> dict:
        """The outputs, after checking their shapes against ``ModelInfo``."""
        k = len(self.info.attributes)
        act = outputs["activations"][1]
        c, h, w = act[1:] if len(act) == 4 else (None, None, None)
        expected = {"logits": (b, k), "activations": (b, c, h, w),
                    "gradients": (b, k, c, h, w), "channel_weights": (k, c)}
        for name in ("logits", "activations", self.grad_output):
            if outputs[name][1] != expected[name]:
                raise BincamError(f"{self.source}: output {name} has shape "
                                  f"{list(outputs[name][1])}, not {list(expected[name])} as its "
                                  f"metadata ({k} attributes, {self.info.gradient_layout} "
                                  f"gradients) and a batch of {b} imply")
        return outputs

    def _run(self, images, indices: list[int]) -> dict[str, np.ndarray]:
        x = self._batch(images)
        names = ("logits", "activations", self.grad_output)
        with self._on_device():
            outputs = self._checked(self._plan.enqueue(x), len(x))
            host = self._plan.download({n: outputs[n] for n in names})
        out = {n: v.astype(np.float32, copy=False) for n, v in host.items()}
        return select(out, indices, len(self.info.attributes))

    def run_forward(self, images) -> np.ndarray:
        x = self._batch(images)
        with self._on_device():
            if self._forward is None:
                import onnx

                proto = onnx.load_model_from_string(self.model_bytes)
                forward = onnx.utils.Extractor(proto).extract_model(
                    [i.name for i in proto.graph.input], ["logits"])
                plan, _ = cached_plan(forward.SerializeToString(), self.info.precision,
                                      self.profile, self.cache, self.device)
                self._forward = _Plan(plan, self.stream, self.cuda_graphs)
            logits = self._forward.enqueue(x)["logits"]
            if logits[1] != (len(x), len(self.info.attributes)):
                raise BincamError(f"{self.source}: the forward plan's logits have shape "
                                  f"{list(logits[1])}")
            return self._forward.download({"logits": logits})["logits"].astype(np.float32,
                                                                               copy=False)

    def _device_masks(self, size: int) -> int:
        """The attributes' masks ``uint8 [K,S,S]`` on the device, uploaded once per size (on
        the engine's stream, from a page-locked copy kept with the others, so no sync)."""
        from bincam.attributes import attribute_masks

        name = f"masks{size}"
        if name not in self._plan.device_buffers:
            mask = attribute_masks(self.attributes, size)
            staged = self._plan.staging(name, mask.shape, np.uint8)
            staged[...] = mask
            ptr = self._plan.buffer(name, staged.nbytes)
            _cuda_check(self.rt.cudaMemcpyAsync(ptr, staged.ctypes.data, staged.nbytes,
                                                self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                                self.stream))
        return self._plan.device_buffers[name][0]

    def fused(self, images, method: str = "gradcam", mode: str = "predicted",
              size: int | None = None, maps: str | None = "f32") -> dict[str, np.ndarray]:
        """Engine and fused epilogue kernel on one stream, the kernel reading the engine's output
        buffers in place: ``logits [B,K]``, ``pe [B,K]`` and (``maps`` = f32 | f16 | u8, or None)
        the final maps ``[B,K,S,S]``, copied to the host once at the end."""
        from bincam.gpu.launcher import FusedEpilogue

        cam_method(method), check_mode(mode)
        if maps is not None and maps not in MAP_TYPES:
            raise BincamError(f"maps must be f32, f16, u8 or None, got {maps!r}")
        size = size or self.info.image_size
        x = self._batch(images)
        b, k = len(x), len(self.attributes)
        with self._on_device():
            outputs = self._checked(self._plan.enqueue(x), b)
            # logits and channel weights float32; activations (and dense gradients) float32, or
            # all float16 (an export with half outputs), read as binary16 without a cast pass
            large = ("activations", "gradients") if self.grad_output == "gradients" \
                else ("activations",)
            kinds = {outputs[n][2] for n in large}
            if outputs["logits"][2] != np.float32 or len(kinds) != 1 or \
                    outputs[self.grad_output][2] not in (np.float16, np.float32) or \
                    (self.grad_output == "channel_weights" and
                     outputs["channel_weights"][2] != np.float32):
                raise BincamError("the fused kernel reads float32 logits and channel weights and "
                                  "float32 or float16 activations and gradients; this plan gives "
                                  + ", ".join(f"{n} {outputs[n][2]}" for n in
                                              ("logits", "activations", self.grad_output)))
            half = kinds == {np.dtype(np.float16)}
            if self._kernel is None:
                self._kernel = FusedEpilogue(device=self.device)
            (acts, (_, c, h, w), _), grads = outputs["activations"], outputs[self.grad_output][0]
            fetch = {"logits": outputs["logits"],
                     "energy": (self._plan.buffer("fused_energy", b * k * 2 * 4), (b, k, 2),
                                np.dtype(np.float32))}
            pointers = {}
            if maps:
                dtype = np.dtype(MAP_TYPES[maps])
                ptr = self._plan.buffer("fused_maps", b * k * size * size * dtype.itemsize)
                fetch["maps"], pointers[f"maps_{maps}"] = (ptr, (b, k, size, size), dtype), ptr
            self._kernel.launch(acts=acts, grads=grads, logits=outputs["logits"][0],
                                shape=(b, k, c, h, w), size=(size, size), method=method,
                                layout=self.info.gradient_layout, mode=mode,
                                mask_positive=self.info.mask_positive,
                                masks=self._device_masks(size), energy=fetch["energy"][0],
                                stream=int(self.stream), half_inputs=half, **pointers)
            out = self._plan.download(fetch)
        inside, total = out.pop("energy").astype(np.float64).transpose(2, 0, 1)
        out["pe"] = np.where(total > 0, inside / np.where(total > 0, total, 1), 0.0)
        return out

    def close(self) -> None:
        """Free buffers, CUDA graphs, the stream, the kernel and both plans; idempotent."""
        if self._plan is None and self._forward is None and self.stream is None \
                and self._kernel is None:
            return
        with self._on_device():
            for plan in (self._forward, self._plan):
                if plan is not None:
                    plan.close()
            if self._kernel is not None:
                self._kernel.close()
            if self.stream is not None:
                self.rt.cudaStreamDestroy(self.stream)
        self._plan = self._forward = self._kernel = self.stream = None
