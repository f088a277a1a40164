"""The ONNX Runtime engine: logits, activations and gradients from an exported bincam model.

CPU provider by default; the CUDA provider when asked for and installed (the ``gpu`` extra ships
``onnxruntime-gpu``, which replaces the CPU wheel's ``onnxruntime`` module), with I/O binding.
The model must carry bincam metadata (``bincam export`` writes it). No torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bincam.batch_checks import check_float_values, check_shape, wrong_dtype
from bincam.errors import BincamError
from bincam.export.metadata import read_metadata
from bincam.runtime.explanation_np import NumpyExplanation, explain_outputs


def _metadata(model_bytes: bytes) -> dict[str, str]:
    """metadata_props of a serialized model, or {} if it does not parse (ORT will then say why)."""
    import onnx

    try:
        proto = onnx.load_model_from_string(model_bytes)
    except Exception:  # noqa: BLE001 - the session creation below reports the real problem
        return {}
    return {p.key: p.value for p in proto.metadata_props}


def session_options(threads: int | None = None, spin: bool = False):
    """ORT session options shared by the engine and the forward-only baseline of benchmarks."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def check_batch(images, size: int | None) -> np.ndarray:
    """Validate ``[B, 3, S, S]`` uint8 or float in [0, 1]; return float32 (NaN/Inf: which images)."""
    x = np.asarray(images)
    check_shape(x.shape, size)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if x.dtype.kind != "f":
        raise wrong_dtype(x.dtype)
    finite = np.isfinite(x).reshape(len(x), -1).all(1)
    check_float_values(np.flatnonzero(~finite).tolist(), float(x.min()), float(x.max()))
    return x.astype(np.float32)


class OrtEngine:
    def __init__(self, model: str | Path | bytes, device: str = "cpu", threads: int | None = None,
                 optimize: bool = True, spin: bool = False):
        """``threads``: ORT intra-op threads (default: one per core). ``spin``: let them busy-wait
        between runs; off by default because the NumPy CAM step runs right after each run on the
        same cores, and spinning threads slow it down (measured: a 0.8 ms einsum took 55 ms)."""
        import onnxruntime as ort

        source = "the model" if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes):
            if not Path(model).is_file():
                raise BincamError(f"ONNX model {model} does not exist")
            model = Path(model).read_bytes()
        layout = _metadata(model).get("bincam.gradient_layout")
        options = session_options(threads, spin)
        # ORT_ENABLE_ALL adds CPU layout transforms (NCHWc) that corrupt the dense gradient of the
        # first image in a batch (seen with onnxruntime 1.32); EXTENDED keeps every fusion but those.
        level = ("ORT_ENABLE_EXTENDED" if layout == "dense" else "ORT_ENABLE_ALL") if optimize \
            else "ORT_DISABLE_ALL"
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        self.optimization_level = level
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BincamError("the CUDA provider is not installed: pip install "
                                  "'bincam[gpu]' (it replaces the onnxruntime CPU wheel)")
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(model, options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises several types for a bad file
            raise BincamError(f"{source} is not a loadable ONNX model "
                              f"({str(exc).splitlines()[0][:160]})") from None
        self.info = read_metadata(self.session.get_modelmeta().custom_metadata_map, source)
        self.device = device
        outputs = {o.name for o in self.session.get_outputs()}
        self.grad_output = "gradients" if self.info.gradient_layout == "dense" else "channel_weights"
        missing = {"logits", "activations", self.grad_output} - outputs
        if missing:
            raise BincamError(f"{source} lacks output(s) {', '.join(sorted(missing))}")

    @property
    def attributes(self) -> list[str]:
        return self.info.attributes

    def run(self, images) -> dict[str, np.ndarray]:
        """``logits [B,K]``, ``activations [B,C,h,w]`` and ``gradients [B,K,C,h,w]`` or
        ``channel_weights [K,C]``."""
        x = check_batch(images, self.info.image_size)
        names = ["logits", "activations", self.grad_output]
        if self.device == "cuda":
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.info.input_name, x)
            for name in names:
                binding.bind_output(name, "cuda")
            self.session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            values = self.session.run(names, {self.info.input_name: x})
        return dict(zip(names, values))

    def run_forward(self, images) -> np.ndarray:
        """Logits only (ORT still computes what the graph needs for them)."""
        x = check_batch(images, self.info.image_size)
        return self.session.run(["logits"], {self.info.input_name: x})[0]

    def explain(self, images, method: str = "gradcam", mode: str = "predicted",
                attributes=None) -> NumpyExplanation:
        return explain_outputs(self.info, self.run(images), np.shape(images)[-1], method, mode,
                               attributes)
