"""The ONNX Runtime engine: logits, activations and gradients from an exported bincam model.

CPU provider by default; the CUDA provider when asked for and installed (the ``gpu`` extra ships
``onnxruntime-gpu``, which replaces the CPU wheel's ``onnxruntime`` module), with I/O binding; a
session asked for CUDA that ONNX Runtime built on the CPU alone is refused, never run silently.
The model must carry bincam metadata (``bincam export`` writes it). ``run_forward`` runs the
file's logits-only subgraph (``onnx.utils.Extractor``) with the same session options, so it is
the forward pass alone. No torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bincam.core.model_info import load_onnx, onnx_info
from bincam.errors import BincamError
from bincam.runtime.engine import Engine, select


def session_options(threads: int | None = None, spin: bool = False):
    """ORT session options shared by the gradient graph and its forward-only subgraph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def check_cuda_provider(used: list[str]) -> None:
    """Refuse a session asked to run on CUDA that ONNX Runtime built on the CPU alone: it drops
    a provider it cannot load (an onnxruntime-gpu wheel for another CUDA major, cuDNN missing,
    ``onnxruntime`` and ``onnxruntime-gpu`` both installed) with a warning only."""
    if "CUDAExecutionProvider" not in used:
        import onnxruntime as ort

        raise BincamError(
            f"ONNX Runtime {ort.__version__} could not use the CUDA provider (the session got "
            f"{', '.join(used) or 'no provider'}; its log above says why); install the "
            "onnxruntime-gpu wheel built for this machine's CUDA major version and cuDNN, with "
            "the CPU wheel onnxruntime uninstalled, or pass --device cpu")


class OrtEngine(Engine):
    kind = "ort"

    def __init__(self, model: str | Path | bytes, device: str = "cpu", threads: int | None = None,
                 optimize: bool = True, spin: bool = False):
        """``threads``: ORT intra-op threads (default: one per core). ``spin``: let them busy-wait
        between runs; off by default because the NumPy CAM step runs right after each run on the
        same cores, and spinning threads slow it down (measured: a 0.8 ms einsum took 55 ms)."""
        import onnxruntime as ort

        proto, data, source = load_onnx(model)
        self.info = onnx_info(proto, source)
        del proto  # the bytes are kept for the forward-only subgraph, built on first use
        options = session_options(threads, spin)
        # ORT_ENABLE_ALL adds CPU layout transforms (NCHWc) that corrupt the dense gradient of the
        # first image in a batch (seen with onnxruntime 1.32); EXTENDED keeps every fusion but those.
        level = ("ORT_ENABLE_EXTENDED" if self.info.gradient_layout == "dense" else
                 "ORT_ENABLE_ALL") if optimize else "ORT_DISABLE_ALL"
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        self.optimization_level, self.options = level, options
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BincamError("the CUDA provider is not installed: pip install "
                                  "'bincam[gpu]' (it replaces the onnxruntime CPU wheel)")
            providers.insert(0, "CUDAExecutionProvider")
        elif device != "cpu":
            raise BincamError(f"--device must be cpu or cuda, got {device!r}")
        try:
            self.session = ort.InferenceSession(data, options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises several types for a bad file
            from bincam.core.own_graph import load_failure

            raise load_failure(data, exc, source) from None
        if device == "cuda":
            check_cuda_provider(self.session.get_providers())
        self.device, self.model_bytes, self._forward = device, data, None
        outputs = {o.name for o in self.session.get_outputs()}
        if self.info.explain:  # an explaining file: its outputs are the explanations
            self.output_names = [n for n in ("logits", "heatmaps", "energy", "raw_maps")
                                 if n in outputs]
            missing = {"logits", "heatmaps"} - outputs
        else:
            grad = "gradients" if self.info.gradient_layout == "dense" else "channel_weights"
            self.output_names = ["logits", "activations", grad]
            missing = set(self.output_names) - outputs
        if missing:
            raise BincamError(f"{source} lacks output(s) {', '.join(sorted(missing))}")

    def check_images(self, images) -> np.ndarray:
        if self.session is None:
            raise BincamError("this ONNX Runtime engine is closed; open a new one")
        return super().check_images(images)

    def _run(self, images, indices: list[int]) -> dict[str, np.ndarray]:
        x = self.check_images(images)
        names = self.output_names
        if self.device == "cuda":
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.info.input_name, x)
            for name in names:
                binding.bind_output(name, "cuda")
            self.session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            values = self.session.run(names, {self.info.input_name: x})
        if not self.info.explain:  # a --half-outputs file's float16 tensors, widened (contract)
            values = [v.astype(np.float32) if v.dtype == np.float16 else v for v in values]
        return select(dict(zip(names, values)), indices, len(self.info.attributes))

    def run_forward(self, images) -> np.ndarray:
        x = self.check_images(images)
        if self._forward is None:
            import onnx
            import onnxruntime as ort

            proto = onnx.load_model_from_string(self.model_bytes)
            inputs = [i.name for i in proto.graph.input]
            forward = onnx.utils.Extractor(proto).extract_model(inputs, ["logits"])
            self._forward = ort.InferenceSession(forward.SerializeToString(), self.options,
                                                 providers=self.session.get_providers())
        return self._forward.run(["logits"], {self.info.input_name: x})[0]

    def close(self) -> None:
        self.session = self._forward = None
