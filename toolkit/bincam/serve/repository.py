"""Triton model repositories for bincam models, and their validation.

    REPO/bincam/config.pbtxt        Python backend (serve.backend) holding a bincam engine
    REPO/bincam/1/model.py          a two-line shim importing serve.backend
    REPO/bincam/1/model.onnx        the gradient or explaining file
    REPO/bincam_onnxruntime/…       an explaining file for Triton's stock onnxruntime backend
    REPO/bincam_tensorrt/…          the same for the tensorrt backend (model.plan built on the GPU)

Every ``config.pbtxt`` is parsed with Triton's model-config protobuf (``tritonclient`` ships it)
and checked against the ONNX file's own inputs and outputs before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bincam.errors import BincamError

SHIM = "from bincam.serve.backend import TritonPythonModel  # noqa: F401\n"
ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 2: "TYPE_UINT8", 7: "TYPE_INT64"}


@dataclass
class ServeOptions:
    name: str = "bincam"
    engine: str = "ort"
    device: str = "cpu"
    method: str = "gradcam"
    mode: str = "predicted"
    max_batch: int = 32
    instances: int = 1
    max_queue_delay_us: int = 2000
    dynamic_batching: bool = True
    threads: int = 0

    def check(self) -> "ServeOptions":
        from bincam.core.methods import cam_method
        from bincam.core.modes import check_mode

        cam_method(self.method), check_mode(self.mode)
        if self.engine not in ("ort", "trt"):
            raise BincamError(f"--engine must be ort or trt, got {self.engine!r}")
        if self.device not in ("cpu", "cuda"):
            raise BincamError(f"--device must be cpu or cuda, got {self.device!r}")
        for what, value, low, high in (("--max-batch", self.max_batch, 1, 4096),
                                       ("--instances", self.instances, 1, 64),
                                       ("--max-queue-delay-us", self.max_queue_delay_us, 0,
                                        10_000_000), ("--threads", self.threads, 0, 1024)):
            if not low <= value <= high:
                raise BincamError(f"{what} must be between {low} and {high}, got {value}")
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise BincamError(f"model name {self.name!r} may hold only letters, digits, - and _")
        return self


def _batching(options: ServeOptions) -> str:
    if not options.dynamic_batching:
        return ""
    return (f"dynamic_batching {{ max_queue_delay_microseconds: {options.max_queue_delay_us} }}\n")


def map_side(info) -> int:
    """Side of the served heatmaps: an explaining file's own map size, else the input size."""
    return int(info.explain["map_size"][0]) if info.explain else int(info.image_size)


def python_config(info, options: ServeOptions) -> str:
    """``config.pbtxt`` of the Python-backend model for a model described by ``info``."""
    k, s, m = len(info.attributes), int(info.image_size), map_side(info)
    return f'''name: "{options.name}"
backend: "python"
max_batch_size: {options.max_batch}
input [
  {{ name: "images" data_type: TYPE_FP32 dims: [ 3, {s}, {s} ] optional: true }},
  {{ name: "pixels" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] optional: true }},
  {{ name: "encoded" data_type: TYPE_STRING dims: [ 1 ] optional: true }}
]
output [
  {{ name: "logits" data_type: TYPE_FP32 dims: [ {k} ] }},
  {{ name: "probabilities" data_type: TYPE_FP32 dims: [ {k} ] }},
  {{ name: "energy" data_type: TYPE_FP32 dims: [ {k} ] }},
  {{ name: "heatmaps" data_type: TYPE_UINT8 dims: [ {k}, {m}, {m} ] }}
]
{_batching(options)}instance_group [ {{ kind: KIND_CPU count: {options.instances} }} ]
parameters [
  {{ key: "engine" value: {{ string_value: "{options.engine}" }} }},
  {{ key: "device" value: {{ string_value: "{options.device}" }} }},
  {{ key: "method" value: {{ string_value: "{options.method}" }} }},
  {{ key: "mode" value: {{ string_value: "{options.mode}" }} }},
  {{ key: "threads" value: {{ string_value: "{options.threads}" }} }}
]
'''


def _io(values, batch: bool) -> list[str]:
    rows = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        rows.append(f'  {{ name: "{v.name}" data_type: {ONNX_TYPES[t.elem_type]} '
                    f'dims: [ {", ".join(str(d) for d in (dims[1:] if batch else dims))} ] }}')
    return rows


def stock_config(proto, name: str, platform: str, options: ServeOptions) -> str:
    """``config.pbtxt`` for Triton's stock backend ``platform`` running the explaining file."""
    inputs = ",\n".join(_io(proto.graph.input, True))
    outputs = ",\n".join(_io(proto.graph.output, True))
    return (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {options.max_batch}\n'
            f'input [\n{inputs}\n]\noutput [\n{outputs}\n]\n{_batching(options)}')


def parse_config(text: str, source: str):
    """The ``ModelConfig`` message of a ``config.pbtxt`` (a clear error where it does not parse)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise BincamError("validating Triton configs needs tritonclient: pip install "
                          "'bincam[serve]'") from None

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise BincamError(f"{source} is not a valid Triton model config ({exc})") from None


def check_config(config, proto, source: str, python_backend: bool) -> None:
    """The config's tensors against the ONNX file's: names, types and dims (batch excluded)."""
    from bincam.core.model_info import onnx_info

    info = onnx_info(proto, source)
    if python_backend:
        k, s, m = len(info.attributes), int(info.image_size), map_side(info)
        want_out = {"logits": [k], "probabilities": [k], "energy": [k], "heatmaps": [k, m, m]}
        want_in = {"images": [3, s, s], "pixels": [-1, -1, 3], "encoded": [1]}
    else:
        def dims(v):
            return [d.dim_value if d.HasField("dim_value") else -1
                    for d in v.type.tensor_type.shape.dim][1:]
        want_in = {v.name: dims(v) for v in proto.graph.input}
        want_out = {v.name: dims(v) for v in proto.graph.output}
    for what, tensors, want in (("input", config.input, want_in),
                                ("output", config.output, want_out)):
        got = {t.name: list(t.dims) for t in tensors}
        if got != want:
            raise BincamError(f"{source}: the config's {what}s {got} do not match the model's "
                              f"{want}")
    if config.max_batch_size < 1:
        raise BincamError(f"{source}: max_batch_size must be at least 1")


def write_repository(folder: Path, model_bytes: bytes, options: ServeOptions,
                     stock: bool = False) -> list[Path]:
    """Write the repository (Python-backend model; with ``stock`` and an explaining file, also
    the onnxruntime and tensorrt backend models), each config validated first. Returns the
    model folders written."""
    from bincam.core.model_info import load_onnx, onnx_info
    from bincam.files import write_atomic

    proto, _, source = load_onnx(model_bytes, "the served model")
    info = onnx_info(proto, source)
    if not info.image_size:
        raise BincamError("the served model needs a fixed input size; export it again")
    parse_config('name: "probe"', "a probe config")  # a clear error first without tritonclient
    models = [(options.name, python_config(info, options), True)]
    if stock:
        if not info.explain:
            raise BincamError("stock onnxruntime / tensorrt backends need an explaining file "
                              "(bincam export --explain): a gradient file's epilogue is Python")
        models += [(f"{options.name}_{backend}", stock_config(
            proto, f"{options.name}_{backend}", platform, options), False)
            for backend, platform in (("onnxruntime", "onnxruntime_onnx"),
                                      ("tensorrt", "tensorrt_plan"))]
    for name, text, python_backend in models:  # validate everything before writing
        check_config(parse_config(text, f"{name}/config.pbtxt"), proto,
                     f"{name}/config.pbtxt", python_backend)
    written = []
    for name, text, python_backend in models:
        model_dir = Path(folder) / name
        write_atomic(model_dir / "config.pbtxt", text.encode())
        tensorrt = name.endswith("_tensorrt")  # the plan's source beside (not in) version 1/
        write_atomic(model_dir / ("" if tensorrt else "1") / "model.onnx", model_bytes)
        if python_backend:
            write_atomic(model_dir / "1" / "model.py", SHIM.encode())
        if tensorrt:
            write_atomic(model_dir / "README.txt", TENSORRT_NOTE.format(name=name).encode())
        written.append(model_dir)
    return written


TENSORRT_NOTE = """Triton's tensorrt backend runs a plan built for the GPU it runs on.
Build it once there:

    mkdir -p {name}/1
    trtexec --onnx={name}/model.onnx --saveEngine={name}/1/model.plan \\
        --minShapes=images:1x3xSxS --optShapes=images:8x3xSxS --maxShapes=images:32x3xSxS

(S: the model's input size; an fp16 explaining file also needs --stronglyTyped). Until then this
model has no version and Triton does not load it.
"""
