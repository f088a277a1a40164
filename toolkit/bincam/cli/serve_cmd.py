"""``bincam serve``: a bincam model behind Triton Inference Server (HTTP and gRPC)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import typer

from bincam.cli.app import app, console
from bincam.errors import BincamError


def _model_bytes(model: Path, layer: str | None) -> bytes:
    """The ONNX file to serve: an exported file as it is, or a checkpoint exported now."""
    from bincam.core.model_info import is_checkpoint, load_onnx, onnx_info

    if is_checkpoint(model):
        try:
            from bincam.checkpoint import load_checkpoint
            from bincam.export.model import export_checkpoint
        except ImportError:
            raise BincamError(f"serving the checkpoint {model} means exporting it, which needs "
                              "PyTorch; export it where torch is installed (bincam export "
                              "CHECKPOINT --out M.onnx) and serve M.onnx") from None

        return export_checkpoint(load_checkpoint(model), layer).SerializeToString()
    proto, data, source = load_onnx(model)
    onnx_info(proto, source)  # a clear error for a file without bincam metadata
    return data


@app.command("serve")
def serve(model: Path = typer.Argument(..., help="Checkpoint folder, or an ONNX file from "
                                      "bincam export (gradient or explaining file)."),
          engine: str = typer.Option("ort", help="ort, or trt (TensorRT, needs an NVIDIA GPU)."),
          device: str = typer.Option("cpu", help="cpu or cuda (ort with onnxruntime-gpu)."),
          host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback "
                                   "makes the server reachable from the network."),
          http_port: int = typer.Option(8000), grpc_port: int = typer.Option(8001),
          max_batch: int = typer.Option(32, help="Largest batch Triton forms or accepts."),
          instances: int = typer.Option(1, help="Model instances (processes) serving at once."),
          max_queue_delay_us: int = typer.Option(2000, help="Dynamic batching: longest wait "
                                                 "for more requests."),
          dynamic_batching: bool = typer.Option(True, help="Let Triton batch requests."),
          method: str = typer.Option("gradcam", help="CAM method (an explaining file's own "
                                     "method is used for it)."),
          mode: str = typer.Option("predicted", help="predicted, positive or negative."),
          threads: int = typer.Option(0, help="ONNX Runtime threads per instance (0: default)."),
          layer: str = typer.Option(None, help="For a checkpoint: the CAM layer."),
          repo: Path = typer.Option(None, help="Write the model repository here (default: a "
                                    "temporary folder, removed at exit)."),
          env: Path = typer.Option(None, help="Serving environment (default $BINCAM_SERVE_ENV "
                                   "or .venv-serve; made by scripts/serve_setup.sh)."),
          name: str = typer.Option("bincam", help="Model name in Triton."),
          log: Path = typer.Option(None, help="tritonserver's log file (default: a temporary "
                                   "one, removed at exit).")) -> None:
    """Serve logits, probabilities, PE and heatmaps over HTTP/gRPC (KServe v2) with Triton."""
    from bincam.serve.repository import ServeOptions, write_repository
    from bincam.serve.server import (ServerOptions, backend_folder, check_ports, log_tail, run,
                                     serving_env)

    options = ServeOptions(name, engine, device, method, mode, max_batch, instances,
                           max_queue_delay_us, dynamic_batching, threads).check()
    server = ServerOptions(host, http_port, grpc_port)
    for what, port in (("--http-port", http_port), ("--grpc-port", grpc_port)):
        if not 1 <= port <= 65535:
            raise BincamError(f"{what} must be between 1 and 65535, got {port}")
    if repo is not None and repo.exists() and (not repo.is_dir() or any(repo.iterdir())):
        raise BincamError(f"--repo {repo} is a file or not empty; give a new or empty folder")
    if log is not None and not log.parent.is_dir():
        raise BincamError(f"--log {log}: the folder {log.parent} does not exist")
    if http_port == grpc_port:
        raise BincamError("--http-port and --grpc-port must differ")
    if not model.exists():
        raise BincamError(f"model {model} does not exist")
    data = _model_bytes(model, layer)  # the model and options first, then the machine
    check_ports(server)
    serving = serving_env(env)
    work = Path(tempfile.mkdtemp(prefix="bincam-serve-"))
    try:
        repository = repo or work / "repository"
        write_repository(repository, data, options)
        backends = backend_folder(serving, work / "backends")
        log = log or work / "tritonserver.log"
        if host not in ("127.0.0.1", "localhost", "::1"):
            console.print(f"[yellow]note:[/] bound to {host}: reachable from the network")

        def ready() -> None:
            console.print(f"ready: model [bold]{name}[/] at http://{host}:{http_port} (HTTP) and "
                          f"{host}:{grpc_port} (gRPC); log {log}; Ctrl-C or SIGTERM stops after "
                          "the requests in flight", highlight=False)

        status, asked = run(serving, repository, backends, name, server, log, ready)
        timed_out = "Exit timeout expired" in (log.read_text(errors="replace")
                                               if log.exists() else "")
        if not asked or (status != 0 and not (status == 1 and timed_out)):
            raise BincamError(f"tritonserver exited with status {status}: {log_tail(log)}")
        console.print("stopped" if status == 0 else "stopped (the exit timeout ran out with "
                      "client connections still open)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
