"""The Triton Python-backend model: holds one bincam engine and answers through ``Handler``.

Triton's stub process imports ``triton_python_backend_utils`` (``pb_utils``) and calls
``initialize`` once per instance, ``execute`` with the requests of a (dynamic) batch and
``finalize`` on unload. The model folder holds ``model.onnx`` (a gradient or explaining file);
``config.pbtxt`` parameters name the engine, method, mode and threads. An error inside
``execute`` becomes that request's error response; the instance keeps serving.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bincam.errors import BincamError
from bincam.serve.handler import IMAGE_INPUTS, Handler, Request


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from bincam.runtime import open_engine

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        threads = int(params.get("threads", "0")) or None
        options = {"threads": threads} if threads and params.get("engine", "ort") == "ort" else {}
        self.engine = open_engine(folder / "model.onnx", params.get("engine", "ort"),
                                  params.get("device", "cpu"), **options)
        self.handler = Handler(self.engine, params.get("method", "gradcam"),
                               params.get("mode", "predicted"))

    def execute(self, requests) -> list:
        import triton_python_backend_utils as pb_utils

        parsed, failed = [], {}
        for i, request in enumerate(requests):
            try:
                inputs = {}
                for name in IMAGE_INPUTS:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is not None:
                        inputs[name] = tensor.as_numpy()
                parsed.append(Request(inputs, list(request.requested_output_names())))
            except Exception as exc:  # noqa: BLE001 - a bad request must not stop the batch
                failed[i] = BincamError(f"unreadable request ({exc})")
                parsed.append(Request({}, []))
        try:
            results = self.handler.handle(parsed)
        except Exception as exc:  # noqa: BLE001 - answer every request rather than crash
            results = [BincamError(f"the model failed ({exc.__class__.__name__})")] * len(parsed)
        responses = []
        for i, result in enumerate(results):
            result = failed.get(i, result)
            if isinstance(result, BincamError):
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(str(result))))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(value))
                    for name, value in result.items()]))
        return responses

    def finalize(self) -> None:
        self.engine.close()
