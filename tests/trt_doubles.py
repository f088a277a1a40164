"""TEST DOUBLES of the ``tensorrt`` module and of ``cuda.bindings.runtime`` for
``tests/test_trt_host.py`` (test-only; nothing here is TensorRT or a GPU). They are strict where
the real libraries are: copies are asynchronous and complete at stream synchronisation, a graph
launch replays the captured work, shapes outside the profile, profiles with min != max on a
static axis, unaligned or unset addresses, unknown streams and ops TensorRT's parser lacks are
refused."""

import ctypes
import enum
import json
import types

import numpy as np
import onnx
from onnx import TensorProto


# ---------------------------------------------------------------- the tensorrt test double
class _DataType(enum.Enum):
    FLOAT, HALF, INT32, UINT8 = range(4)


ONNX_TO_DOUBLE = {TensorProto.FLOAT: _DataType.FLOAT, TensorProto.FLOAT16: _DataType.HALF,
                  TensorProto.INT32: _DataType.INT32, TensorProto.UINT8: _DataType.UINT8}


def _io(model_bytes):
    """[(name, is_input, dtype, shape with -1 for a symbolic axis)] of an ONNX file."""
    graph = onnx.load_model_from_string(model_bytes).graph
    out = []
    for is_input, values in ((True, graph.input), (False, graph.output)):
        for v in values:
            dims = [d.dim_value if d.HasField("dim_value") else -1
                    for d in v.type.tensor_type.shape.dim]
            out.append((v.name, is_input, ONNX_TO_DOUBLE[v.type.tensor_type.elem_type], dims))
    return out


def tensorrt_double(**knobs):
    """A stand-in ``tensorrt`` module; ``knobs``: set_timing_cache_ok, timing_cache_none,
    parse_ok, input_ok, execute_ok, fail_execute_at (the n-th execution fails), address_ok,
    dtypes (name → _DataType), formats (name → TensorFormat name), unresolved (output names
    whose shape stays -1)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0+test-double"
    trt.log = {"builds": 0, "profiles": [], "timing_blobs": [], "executes": 0}
    trt.knobs = {"set_timing_cache_ok": True, "timing_cache_none": False, "parse_ok": True,
                 "input_ok": True, "execute_ok": True, "fail_execute_at": None,
                 "address_ok": True, "dtypes": {}, "formats": {}, "unresolved": (), **knobs}
    trt.DataType = _DataType
    trt.TensorFormat = enum.Enum("TensorFormat", "LINEAR CHW2 HWC8")
    trt.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("Flag", {"STRONGLY_TYPED": 0})

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, tuple(shape)

    class Network:
        def __init__(self):
            self.io = []

        @property
        def num_inputs(self):
            return sum(1 for _, is_in, _, _ in self.io if is_in)

        def get_input(self, i):
            name, _, _, shape = [t for t in self.io if t[1]][i]
            return Tensor(name, shape)

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse(self, data):
            from bincam.export.lint import lint_tensorrt

            self.errors = (["node 3: unsupported (test double)"] if not trt.knobs["parse_ok"]
                           else lint_tensorrt(onnx.load_model_from_string(data)))
            self.num_errors = len(self.errors)
            if self.errors:
                return False
            self.network.io = _io(data)
            return True

        def get_error(self, i):
            return self.errors[i]

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+tactics"

    class Config:
        def __init__(self):
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            pass

        network = None  # set by the builder double's create_network (one network per build)

        def add_optimization_profile(self, profile):
            name, shapes = profile.shapes
            (dims,) = [s for n, is_in, _, s in self.network.io if n == name and is_in]
            if any(len(s) != len(dims) for s in shapes) or any(
                    d >= 0 and any(s[i] != d for s in shapes) for i, d in enumerate(dims)) or \
                    any(not shapes[0][i] <= shapes[1][i] <= shapes[2][i]
                        for i in range(len(dims))):
                return -1  # TensorRT: -1 for an invalid profile
            trt.log["profiles"].append(profile.shapes)
            self.profile = profile.shapes
            return 0

        def create_timing_cache(self, blob):
            trt.log["timing_blobs"].append(bytes(blob))
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return trt.knobs["set_timing_cache_ok"]

        def get_timing_cache(self):
            return None if trt.knobs["timing_cache_none"] else self.cache

    class Profile:
        def set_shape(self, name, *shapes):
            self.shapes = (name, [tuple(s) for s in shapes])

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            Config.network = Network()
            return Config.network

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.log["builds"] += 1
            return json.dumps({"io": [[n, i, d.name, s] for n, i, d, s in network.io],
                               "profile": config.profile}).encode()

    class Context:
        """set_input_shape refuses shapes outside the profile; an effective shape change
        re-plans the context's internal memory (``generation``): work captured before reads
        freed memory when replayed after (NaN outputs here). execute_async_v3 refuses an unset
        shape or address and a stream the runtime double did not create, and enqueues its work
        on the stream: ``output[b] = mean(input[b]) + 0.5 · arange``."""

        def __init__(self, engine):
            self.engine, self.batch, self.addresses = engine, None, {}
            self.shape, self.generation = None, 0

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.profile[1]
            shape = tuple(shape)
            if name != self.engine.profile[0] or len(shape) != len(lo) or \
                    any(not a <= d <= b for a, d, b in zip(lo, shape, hi)):
                return False
            if shape != self.shape:
                self.shape, self.batch = shape, shape[0]
                self.generation += 1
            return trt.knobs["input_ok"]

        def get_tensor_shape(self, name):
            if name in trt.knobs["unresolved"]:
                return tuple(self.engine.shapes[name])
            return tuple(self.batch if d < 0 else d for d in self.engine.shapes[name])

        def set_tensor_address(self, name, ptr):
            if ptr % 256:  # TensorRT needs 256-byte aligned I/O addresses
                return False
            self.addresses[name] = ptr
            return trt.knobs["address_ok"]

        def execute_async_v3(self, stream):
            trt.log["executes"] += 1
            if trt.log["executes"] == trt.knobs["fail_execute_at"]:
                return False
            rt = trt.runtime
            if self.shape is None or set(self.engine.names) - set(self.addresses) or \
                    stream not in rt.state["streams"]:
                return False
            x_name = self.engine.profile[0]
            shapes = {n: self.get_tensor_shape(n) for n in self.engine.names}
            addresses, generation = dict(self.addresses), self.generation
            types = {_DataType.FLOAT: np.float32, _DataType.HALF: np.float16,
                     _DataType.INT32: np.int32, _DataType.UINT8: np.uint8}

            def work():
                x = np.empty(shapes[x_name], np.float32)
                ctypes.memmove(x.ctypes.data, addresses[x_name], x.nbytes)
                for name in self.engine.names:
                    if name == x_name:
                        continue
                    out = np.empty(shapes[name], types[self.engine.types[name]])
                    if generation != self.generation:
                        out[...] = np.nan  # internal memory of an older shape: undefined
                    elif self.engine.shapes[name][0] < 0:  # batched: per sample
                        per = out.reshape(len(out), -1)
                        per[...] = x.reshape(len(x), -1).mean(1)[:, None] + \
                            0.5 * np.arange(per.shape[1])
                    else:  # not batched (channel weights)
                        out[...] = (x.mean() + 0.5 * np.arange(out.size)).reshape(out.shape)
                    ctypes.memmove(addresses[name], out.ctypes.data, out.nbytes)
            rt.enqueue(stream, work)
            return trt.knobs["execute_ok"]

    class Engine:
        def __init__(self, plan):
            spec, self.profile = plan["io"], plan["profile"]
            self.profile = (self.profile[0], [tuple(p) for p in self.profile[1]])
            self.names = [n for n, *_ in spec]
            self.inputs = {n for n, is_in, *_ in spec if is_in}
            self.shapes = {n: s for n, _, _, s in spec}
            self.types = {n: trt.knobs["dtypes"].get(n, _DataType[d]) for n, _, d, _ in spec}
            self.num_io_tensors = len(spec)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name in self.inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return self.types[name]

        def get_tensor_format(self, name):
            return trt.TensorFormat[trt.knobs["formats"].get(name, "LINEAR")]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return Engine(json.loads(bytes(plan)))

    for cls in (Logger, OnnxParser, Builder, Runtime):
        setattr(trt, cls.__name__, cls)
    return trt


# ------------------------------------------------------ the cuda.bindings.runtime test double
def runtime_double(devices=2):
    """A stand-in ``cuda.bindings.runtime``: device and host memory are real host buffers
    (cudaMalloc's 256-byte aligned), so copies move bytes. Streams are queues: cudaMemcpyAsync,
    a TensorRT double's execution and a graph launch enqueue work that runs at
    cudaStreamSynchronize (or at an implicitly synchronising cudaFree, cudaFreeHost or
    cudaMemcpy), so a staging buffer reused before its copy ran is seen; stream capture records
    the work into the graph and a launch replays it. Unknown streams are refused; calls are
    logged."""
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaError_t = enum.Enum("cudaError_t", {"cudaSuccess": 0, "cudaErrorInvalidValue": 1,
                                               "cudaErrorInvalidResourceHandle": 400,
                                               "cudaErrorStreamCaptureUnsupported": 900})
    rt.cudaMemcpyKind = enum.Enum("cudaMemcpyKind", "cudaMemcpyHostToDevice cudaMemcpyDeviceToHost")
    rt.cudaStreamCaptureMode = enum.Enum("cudaStreamCaptureMode",
                                         "cudaStreamCaptureModeThreadLocal")
    ok, E = rt.cudaError_t.cudaSuccess, rt.cudaError_t
    rt.state = {"device": 0, "buffers": {}, "pinned": {}, "copies": [], "graphs": set(),
                "execs": set(), "destroyed": [], "device_log": [], "next": 1, "streams": {},
                "capturing": {}, "graph_work": {}}

    def alloc(table, n):
        buf = ctypes.create_string_buffer(max(int(n), 1) + 256)
        ptr = ctypes.addressof(buf)
        ptr += -ptr % 256
        table[ptr] = buf
        return ptr

    def new_id():
        rt.state["next"] += 1
        return rt.state["next"]

    def set_device(d):
        if not 0 <= d < devices:
            return (rt.cudaError_t.cudaErrorInvalidValue,)
        rt.state["device"] = d
        rt.state["device_log"].append(d)
        return (ok,)

    def enqueue(stream, work):
        if stream in rt.state["capturing"]:
            rt.state["capturing"][stream].append(work)
        else:
            rt.state["streams"][stream].append(work)

    def synchronize(stream):
        if stream not in rt.state["streams"]:
            return (E.cudaErrorInvalidResourceHandle,)
        if stream in rt.state["capturing"]:
            return (E.cudaErrorStreamCaptureUnsupported,)
        queue = rt.state["streams"][stream]
        while queue:
            queue.pop(0)()
        return (ok,)

    def synchronize_all():
        for stream in list(rt.state["streams"]):
            synchronize(stream)

    def copy_async(dst, src, n, kind, stream):
        if stream not in rt.state["streams"]:
            return (E.cudaErrorInvalidResourceHandle,)
        rt.state["copies"].append((dst, src, n, kind, True))
        enqueue(stream, lambda: ctypes.memmove(dst, src, n))
        return (ok,)

    def copy(dst, src, n, kind):
        synchronize_all()
        rt.state["copies"].append((dst, src, n, kind, False))
        ctypes.memmove(dst, src, n)
        return (ok,)

    def free(table):
        def fn(ptr):
            synchronize_all()  # cudaFree and cudaFreeHost synchronise implicitly
            table.pop(ptr)
            return (ok,)
        return fn

    def create_stream():
        stream = new_id()
        rt.state["streams"][stream] = []
        return (ok, stream)

    def begin_capture(stream, mode):
        if stream not in rt.state["streams"]:
            return (E.cudaErrorInvalidResourceHandle,)
        rt.state["capturing"][stream] = []
        return (ok,)

    def end_capture(stream):
        work = rt.state["capturing"].pop(stream)
        graph = new_id()
        rt.state["graphs"].add(graph)
        rt.state["graph_work"][graph] = work
        return (ok, graph)

    def instantiate(graph, flags):
        instance = new_id()
        rt.state["execs"].add(instance)
        rt.state["graph_work"][instance] = list(rt.state["graph_work"][graph])
        return (ok, instance)

    def launch(instance, stream):
        if stream not in rt.state["streams"] or instance not in rt.state["graph_work"]:
            return (E.cudaErrorInvalidResourceHandle,)
        for work in rt.state["graph_work"][instance]:
            enqueue(stream, work)
        return (ok,)

    def destroy(kind):
        def fn(handle):
            rt.state["destroyed"].append((kind, handle))
            if kind == "stream":
                synchronize(handle)
                rt.state["streams"].pop(handle, None)
            else:
                rt.state["graph_work"].pop(handle, None)
            return (ok,)
        return fn

    props = types.SimpleNamespace(name=b"Test Double GPU", major=9, minor=0)
    rt.enqueue = enqueue
    rt.__dict__.update(
        cudaGetDevice=lambda: (ok, rt.state["device"]), cudaSetDevice=set_device,
        cudaGetDeviceProperties=lambda d: (ok, props),
        cudaMalloc=lambda n: (ok, alloc(rt.state["buffers"], n)),
        cudaFree=free(rt.state["buffers"]),
        cudaMallocHost=lambda n: (ok, alloc(rt.state["pinned"], n)),
        cudaFreeHost=free(rt.state["pinned"]),
        cudaMemcpyAsync=copy_async, cudaMemcpy=copy,
        cudaStreamCreate=create_stream, cudaStreamSynchronize=synchronize,
        cudaStreamDestroy=destroy("stream"),
        cudaStreamBeginCapture=begin_capture, cudaStreamEndCapture=end_capture,
        cudaGraphInstantiate=instantiate, cudaGraphLaunch=launch,
        cudaGraphExecDestroy=destroy("exec"), cudaGraphDestroy=destroy("graph"))
    return rt
