"""``bincam serve``: the request handler and repositories alone, then the real Triton server
(HTTP and gRPC) against the in-process engine, bad requests, SIGTERM draining and a restart after
a kill. The server tests need the serving environment (``scripts/serve_setup.sh``); without it
they are skipped, except where ``BINCAM_REQUIRE_SERVE=1`` (CI): then they fail."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bincam.data.batches import synthetic_faces
from bincam.errors import BincamError
from bincam.runtime import open_engine
from bincam.serve.handler import Handler, Request

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "models" / "synth-small-balanced"
SERVE_ENV = ROOT / ".venv-serve"


@pytest.fixture(scope="module")
def engine():
    with open_engine(SMALL, "ort") as e:
        yield e


def _png(face: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(face).save(buf, format="PNG")
    return buf.getvalue()


def test_handler_inputs_agree_with_the_engine(engine):
    faces = synthetic_faces(3, 112, seed=1)
    big = synthetic_faces(2, 224, seed=1)  # square, brought to 112 by the card's rule
    handler = Handler(engine)
    requests = [Request({"pixels": faces}, ["logits", "energy", "heatmaps"]),
                Request({"images": faces.transpose(0, 3, 1, 2).astype(np.float32) / 255},
                        ["logits", "probabilities"]),
                Request({"encoded": np.array([[_png(f)] for f in faces], dtype=object)},
                        ["energy"]),
                Request({"pixels": big}, ["logits"])]
    out = handler.handle(requests)
    ref = engine.explain(faces.transpose(0, 3, 1, 2))
    assert np.abs(out[0]["logits"] - ref.logits).max() < 1e-6
    assert np.abs(out[0]["energy"] - ref.proportional_energy()).max() < 1e-6
    assert out[0]["heatmaps"].dtype == np.uint8 and out[0]["heatmaps"].shape == (3, 40, 112, 112)
    assert np.abs(out[0]["heatmaps"] - np.floor(255 * ref.heatmaps() + 0.5)).max() == 0
    assert set(out[1]) == {"logits", "probabilities"}
    assert np.abs(out[1]["logits"] - ref.logits).max() < 1e-5
    assert np.abs(out[1]["probabilities"] - 1 / (1 + np.exp(-ref.logits))).max() < 1e-6
    assert np.abs(out[2]["energy"] - ref.proportional_energy()).max() < 1e-6
    from bincam.data.celeba import to_frame

    framed = np.stack([np.asarray(to_frame(Image.fromarray(b), 112)) for b in big])
    assert np.abs(out[3]["logits"] - engine.run_forward(framed.transpose(0, 3, 1, 2))).max() \
        < 1e-5


def test_handler_computes_only_what_is_asked(engine):
    calls = []

    class Counting:
        info = engine.info

        def explain(self, *a, **k):
            calls.append("explain")
            return engine.explain(*a, **k)

        def run_forward(self, x):
            calls.append("forward")
            return engine.run_forward(x)

    faces = synthetic_faces(2, 112, seed=2)
    Handler(Counting()).handle([Request({"pixels": faces}, ["logits", "probabilities"])])
    assert calls == ["forward"]
    Handler(Counting()).handle([Request({"pixels": faces}, ["energy"]),
                                Request({"pixels": faces}, ["logits"])])
    assert sorted(calls[1:]) == ["explain", "forward"]


def test_handler_refuses_bad_requests_one_by_one(engine):
    good = synthetic_faces(1, 112, seed=3)
    nan = np.full((1, 3, 112, 112), np.nan, np.float32)
    bad = [Request({}, ["logits"]),
           Request({"pixels": good, "images": nan}, ["logits"]),
           Request({"images": nan}, ["logits"]),
           Request({"images": np.zeros((0, 3, 112, 112), np.float32)}, ["logits"]),
           Request({"images": np.zeros((1, 3, 64, 64), np.float32)}, ["logits"]),
           Request({"images": np.zeros((1, 3, 112, 112), np.float64)}, ["logits"]),
           Request({"pixels": np.zeros((1, 100, 120, 3), np.uint8)}, ["logits"]),
           Request({"encoded": np.array([[b"not an image"]], dtype=object)}, ["logits"]),
           Request({"pixels": good}, ["saliency"])]
    expected = ["exactly one of the inputs", "exactly one of the inputs", "NaN or Inf",
                "batch of 0", "112", "float32", "neither CelebA-aligned", "does not decode",
                "unknown output(s) saliency"]
    out = Handler(engine).handle(bad + [Request({"pixels": good}, ["logits"])])
    for result, text in zip(out, expected):
        assert isinstance(result, BincamError) and text in str(result), (text, result)
    assert out[-1]["logits"].shape == (1, 40)


def test_an_engine_failure_stays_with_its_request(engine):
    """Not a user error (the engine raises something else on one request's images): only that
    request fails, the others in the same batch are answered."""
    class Fragile:
        info = engine.info

        def explain(self, x, *a, **k):
            if np.any(x[:, 0, 0, 0] == 1.0):  # the poisoned request's marker pixel
                raise RuntimeError("kernel exploded")
            return engine.explain(x, *a, **k)

        def run_forward(self, x):
            return engine.run_forward(x)

    faces = synthetic_faces(3, 112, seed=8)
    poisoned = faces.copy()
    poisoned[:, 0, 0, :] = 255
    faces[:, 0, 0, :] = 0
    out = Handler(Fragile()).handle([Request({"pixels": faces[:1]}, ["energy"]),
                                     Request({"pixels": poisoned[:1]}, ["energy"]),
                                     Request({"pixels": faces[1:]}, ["energy"])])
    assert isinstance(out[1], BincamError) and "kernel exploded" in str(out[1])
    assert out[0]["energy"].shape == (1, 40) and out[2]["energy"].shape == (2, 40)


def test_repository_configs_are_validated(tmp_path):
    pytest.importorskip("tritonclient.grpc")
    from bincam.checkpoint import load_checkpoint
    from bincam.export.explain_graph import ExplainSpec
    from bincam.export.explaining import export_explaining
    from bincam.serve.repository import (ServeOptions, check_config, parse_config,
                                         python_config, write_repository)

    made = export_explaining(ExplainSpec(map_dtype="uint8"), load_checkpoint(SMALL),
                             select="Smiling,Bald")
    data = made.model.SerializeToString()
    written = write_repository(tmp_path / "r", data, ServeOptions(max_batch=8), stock=True)
    assert [p.name for p in written] == ["bincam", "bincam_onnxruntime", "bincam_tensorrt"]
    for folder in written:
        config = parse_config((folder / "config.pbtxt").read_text(), folder.name)
        check_config(config, made.model, folder.name, folder.name == "bincam")
        assert config.max_batch_size == 8
    ort_config = parse_config((written[1] / "config.pbtxt").read_text(), "ort")
    assert [o.data_type for o in ort_config.output][1] == 2  # TYPE_UINT8 heatmaps
    text = python_config(__import__("bincam").core.model_info.onnx_info(made.model, "m"),
                         ServeOptions()).replace("dims: [ 2 ]", "dims: [ 3 ]", 1)
    with pytest.raises(BincamError, match="do not match the model's"):
        check_config(parse_config(text, "x"), made.model, "x", True)
    with pytest.raises(BincamError, match="not a valid Triton model config"):
        parse_config("name: bincam\nmax_batch_size: [", "y")
    with pytest.raises(BincamError, match="need an explaining file"):
        write_repository(tmp_path / "g", made.gradient.SerializeToString(), ServeOptions(),
                         stock=True)


def test_a_numpy_2_environment_is_refused():
    """nvidia-pytriton's stub returns empty tensors under numpy 2: such an environment must be
    refused, not served from (this test environment has numpy 2)."""
    from bincam.serve.server import serving_env

    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("this environment has numpy < 2")
    with pytest.raises(BincamError, match="needs numpy < 2|nvidia-pytriton"):
        serving_env(sys.prefix)
    with pytest.raises(BincamError, match="no serving environment"):
        serving_env(ROOT / "no-such-env")


def _bincam(*args):
    return subprocess.run([sys.executable, "-m", "bincam", *args], capture_output=True,
                          text=True, timeout=600)


def test_cli_refuses_bad_serve_options_and_writes_repositories(tmp_path):
    for args, text in ((["--max-batch", "0"], "--max-batch must be between 1 and 4096"),
                       (["--engine", "torch"], "--engine must be ort or trt"),
                       (["--http-port", "70000"], "--http-port must be between"),
                       (["--env", str(tmp_path / "none")], "no serving environment"),
                       (["--log", str(tmp_path / "no" / "x.log")], "does not exist"),
                       (["--repo", str(SMALL / "card.json")], "is a file or not empty")):
        proc = _bincam("serve", str(SMALL), *args)
        assert proc.returncode == 2 and text in " ".join(proc.stderr.split()), proc.stderr
        assert "Traceback" not in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        proc = _bincam("serve", str(SMALL), "--http-port", str(port))
        assert proc.returncode == 2 and f"--http-port {port} on 127.0.0.1 is not free" in \
            " ".join(proc.stderr.split())
    pytest.importorskip("tritonclient.grpc")
    proc = _bincam("export", str(SMALL), "--out", str(tmp_path / "m.onnx"), "--no-checks",
                   "--triton-repo", str(tmp_path / "repo"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["bincam"]
    assert (tmp_path / "repo" / "bincam" / "1" / "model.onnx").read_bytes() == \
        (tmp_path / "m.onnx").read_bytes()
    again = _bincam("export", str(SMALL), "--out", str(tmp_path / "n.onnx"), "--no-checks",
                    "--triton-repo", str(tmp_path / "repo"))
    assert again.returncode == 2 and "is a file or not empty" in again.stderr
    assert not (tmp_path / "n.onnx").exists()


# ---------------------------------------------------------------------------- the real server

def _require_server():
    if not (SERVE_ENV / "bin" / "python").exists():
        message = "serve tests need .venv-serve: run bash scripts/serve_setup.sh"
        if os.environ.get("BINCAM_REQUIRE_SERVE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip("tritonclient.grpc")


def _free_ports(n: int = 2) -> list[int]:
    """``n`` distinct free loopback ports (held open together while chosen)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Served:
    def __init__(self, tmp: Path, *args: str):
        self.http, self.grpc = _free_ports()
        self.log = tmp / f"triton-{self.http}.log"
        self.out = open(tmp / f"serve-{self.http}.out", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bincam", "serve", str(SMALL), "--http-port", str(self.http),
             "--grpc-port", str(self.grpc), "--env", str(SERVE_ENV), "--log", str(self.log),
             "--max-batch", "8", *args], stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            self.out.seek(0)
            text = self.out.read()
            if "ready:" in text:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"bincam serve stopped: {text[-2000:]}")
            time.sleep(0.5)
        raise AssertionError("bincam serve was not ready in 240 s")

    def text(self) -> str:
        self.out.seek(0)
        return self.out.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require_server()
    served = Served(tmp_path_factory.mktemp("serve"))
    yield served
    served.stop()


@pytest.mark.slow
def test_http_and_grpc_answers_equal_the_engine(server, engine):
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    faces = synthetic_faces(4, 112, seed=5)
    ref = engine.explain(faces.transpose(0, 3, 1, 2))
    for module, port in ((http, server.http), (grpc, server.grpc)):
        client = module.InferenceServerClient(f"127.0.0.1:{port}")
        pixels = module.InferInput("pixels", list(faces.shape), "UINT8")
        pixels.set_data_from_numpy(faces)
        result = client.infer("bincam", [pixels], outputs=[
            module.InferRequestedOutput(n) for n in ("logits", "probabilities", "energy",
                                                     "heatmaps")])
        assert np.abs(result.as_numpy("logits") - ref.logits).max() <= 1e-6
        assert np.abs(result.as_numpy("energy") - ref.proportional_energy()).max() <= 1e-6
        assert np.abs(result.as_numpy("heatmaps").astype(float)
                      - np.floor(255 * ref.heatmaps() + 0.5)).max() == 0
        images = module.InferInput("images", [4, 3, 112, 112], "FP32")
        images.set_data_from_numpy(faces.transpose(0, 3, 1, 2).astype(np.float32) / 255)
        only = client.infer("bincam", [images], outputs=[module.InferRequestedOutput("logits")])
        assert only.as_numpy("heatmaps") is None
        assert np.abs(only.as_numpy("logits") - ref.logits).max() <= 1e-5


@pytest.mark.slow
def test_bad_requests_get_errors_and_the_server_goes_on(server):
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(f"127.0.0.1:{server.http}")

    def ask(name, array, dtype):
        tensor = http.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        return client.infer("bincam", [tensor], outputs=[http.InferRequestedOutput("logits")])

    cases = [("images", np.zeros((1, 3, 112, 112), np.float64), "FP64", "FP64"),
             ("images", np.zeros((1, 3, 64, 64), np.float32), "FP32", "shape"),
             ("images", np.full((1, 3, 112, 112), np.nan, np.float32), "FP32", "NaN"),
             ("images", np.zeros((0, 3, 112, 112), np.float32), "FP32", ""),
             ("images", np.zeros((9, 3, 112, 112), np.float32), "FP32", "batch"),
             ("encoded", np.array([[b"\x89PNG garbage"]], dtype=object), "BYTES", "decode")]
    for name, array, dtype, text in cases:
        with pytest.raises(InferenceServerException) as info:
            ask(name, array, dtype)
        assert text.lower() in str(info.value).lower(), (name, dtype, str(info.value))
        assert ask("pixels", synthetic_faces(1, 112, seed=6), "UINT8").as_numpy("logits") \
            .shape == (1, 40)
    with pytest.raises(InferenceServerException, match="restricted"):
        client.load_model("bincam")  # no remote model loading


@pytest.mark.slow
def test_readme_client_example_runs(server):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Serving"):]
    snippet = section[section.index("```python") + 9:]
    snippet = snippet[:snippet.index("```")]
    snippet = snippet.replace("8000", str(server.http)).replace("8001", str(server.grpc))
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    assert scope["energy"].shape == (2, 40) and scope["logits"].shape == (2, 40)


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_and_a_killed_server_restarts(tmp_path):
    _require_server()
    import tritonclient.http as http

    served = Served(tmp_path)
    faces = synthetic_faces(8, 112, seed=7)
    done: list[tuple[float, bool]] = []

    def one(port, repeats=1):
        client = http.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
        tensor = http.InferInput("pixels", list(faces.shape), "UINT8")
        tensor.set_data_from_numpy(faces)
        for _ in range(repeats):
            try:
                ok = client.infer("bincam", [tensor]).as_numpy("energy").shape == (8, 40)
            except Exception:  # noqa: BLE001 - refused once the server stops taking requests
                ok = False
            done.append((time.monotonic(), ok))
        client.close()

    threads = [threading.Thread(target=one, args=(served.http, 20)) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)  # requests in flight
    signalled = time.monotonic()
    assert served.stop() == 0
    for t in threads:
        t.join(120)
    assert "stopped" in served.text()
    # requests in flight when SIGTERM came were answered, not dropped
    assert any(ok and t > signalled for t, ok in done), done
    assert sum(ok for _, ok in done) >= 4

    again = Served(tmp_path)  # a kill under load, then a restart on new ports
    try:
        kill_target = _tritonserver_pid(again.http)
        threading.Thread(target=one, args=(again.http, 3), daemon=True).start()
        time.sleep(0.2)
        os.kill(kill_target, signal.SIGKILL)
        assert again.proc.wait(60) == 2
        assert "tritonserver exited with status -9" in again.text()
    finally:
        again.stop()
    third = Served(tmp_path)
    try:
        client = http.InferenceServerClient(f"127.0.0.1:{third.http}")
        tensor = http.InferInput("pixels", list(faces.shape), "UINT8")
        tensor.set_data_from_numpy(faces)
        assert client.infer("bincam", [tensor]).as_numpy("logits").shape == (8, 40)
        client.close()
    finally:
        assert third.stop() == 0


def _tritonserver_pid(http_port: int) -> int:
    """The tritonserver serving ``http_port`` (found by its command line)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"tritonserver") and \
                    f"--http-port={http_port}".encode() in args:
                return int(entry.name)
    raise AssertionError(f"no tritonserver process serves port {http_port}")
