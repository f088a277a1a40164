"""Find and run ``tritonserver`` on a bincam model repository.

The server binary and the Python-backend stub come from the ``nvidia-pytriton`` wheel installed in
the *serving environment* (``scripts/serve_setup.sh`` makes ``.venv-serve``: torch-free, numpy < 2
because the wheel's stub was built against the numpy 1 ABI and returns empty tensors under numpy 2).
The stub finds that environment's packages through ``PATH``. Safety defaults: bound to
127.0.0.1, explicit model control with the model-repository and model-config APIs restricted to
a random per-run key (no remote loading), metrics off; request sizes are bounded by the model
config (``max_batch``) and by ``serve.handler`` (image sides and encoded sizes).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bincam.errors import BincamError

SETUP = "run bash scripts/serve_setup.sh (it makes .venv-serve) or pass --env DIR"
# Triton APIs only the operator may call (with the per-run key): clients get health, metadata
# and inference only
RESTRICTED = ("model-repository", "model-config", "shared-memory", "logging", "trace",
              "statistics")


@dataclass
class ServingEnv:
    """A Python environment that has bincam, onnxruntime, numpy < 2 and nvidia-pytriton."""

    prefix: Path
    tritonserver: Path
    stub: Path
    backend: Path          # the wheel's python backend folder (libtriton_python.so, utils)
    libraries: Path        # the wheel's bundled shared libraries


def _probe(python: Path) -> dict:
    code = ("import importlib.util as u, json, sys, numpy; s = u.find_spec('pytriton'); "
            "print(json.dumps({'numpy': numpy.__version__, 'version': '%d.%d' % sys.version_info"
            "[:2], 'pytriton': s.submodule_search_locations[0] if s else None, "
            "'bincam': bool(u.find_spec('bincam')), 'ort': bool(u.find_spec('onnxruntime'))}))")
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                             timeout=120)
    except OSError as exc:
        raise BincamError(f"cannot run {python} ({exc.strerror}); {SETUP}") from None
    except subprocess.TimeoutExpired:
        raise BincamError(f"{python} did not answer within 120 s; {SETUP}") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise BincamError(f"{python} cannot import numpy ({last}); {SETUP}")
    import json

    return json.loads(out.stdout)


def serving_env(prefix: Path | str | None = None) -> ServingEnv:
    """The serving environment at ``prefix`` (default: ``$BINCAM_SERVE_ENV``, else ``.venv-serve``
    in the working folder, else this interpreter's), checked for what the stub needs."""
    candidates = [prefix] if prefix else [os.environ.get("BINCAM_SERVE_ENV"), ".venv-serve",
                                          sys.prefix]
    chosen = next((Path(c) for c in candidates if c and (Path(c) / "bin" / "python").exists()),
                  None)
    if chosen is None:
        raise BincamError(f"no serving environment ({prefix or '.venv-serve'} has no bin/python); "
                          f"{SETUP}")
    python = chosen / "bin" / "python"
    facts = _probe(python)
    problems = []
    if not facts["pytriton"]:
        problems.append("nvidia-pytriton (the Triton server) is not installed")
    if int(facts["numpy"].split(".")[0]) >= 2:
        problems.append(f"numpy is {facts['numpy']}; Triton's Python stub needs numpy < 2")
    if not facts["bincam"] or not facts["ort"]:
        problems.append("bincam and onnxruntime must be importable")
    if problems:
        raise BincamError(f"serving environment {chosen}: {'; '.join(problems)}; {SETUP}")
    root = Path(facts["pytriton"]) / "tritonserver"
    stub = root / "python_backend_stubs" / facts["version"] / "triton_python_backend_stub"
    if not stub.exists():
        raise BincamError(f"nvidia-pytriton has no Python-backend stub for Python "
                          f"{facts['version']}; use Python 3.8–3.13 for the serving environment")
    return ServingEnv(chosen.resolve(), root / "bin" / "tritonserver", stub,
                      root / "backends" / "python",
                      Path(facts["pytriton"]).parent / "nvidia_pytriton.libs")


def backend_folder(env: ServingEnv, folder: Path) -> Path:
    """A ``--backend-directory`` with the wheel's python backend and the stub for this Python."""
    python = folder / "python"
    python.mkdir(parents=True, exist_ok=True)
    for item in env.backend.iterdir():
        if item.is_file():
            shutil.copy2(item, python / item.name)
    shutil.copy2(env.stub, python / env.stub.name)
    return folder


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    exit_timeout_s: int = 30


def command(env: ServingEnv, repository: Path, backends: Path, model: str,
            options: ServerOptions, admin_key: str) -> list[str]:
    restricted = f"{','.join(RESTRICTED)}:bincam-admin={admin_key}"
    return [str(env.tritonserver), f"--model-repository={repository}",
            f"--backend-directory={backends}", "--model-control-mode=explicit",
            f"--load-model={model}", "--strict-readiness=true", "--allow-metrics=false",
            f"--http-address={options.host}", f"--http-port={options.http_port}",
            f"--grpc-address={options.host}", f"--grpc-port={options.grpc_port}",
            f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}",
            f"--exit-timeout-secs={options.exit_timeout_s}", "--log-verbose=0"]


def environment(env: ServingEnv) -> dict[str, str]:
    base = dict(os.environ)
    base["PATH"] = f"{env.prefix / 'bin'}{os.pathsep}{base.get('PATH', '')}"
    base["LD_LIBRARY_PATH"] = f"{env.libraries}{os.pathsep}{base.get('LD_LIBRARY_PATH', '')}"
    base.pop("PYTHONHOME", None)
    return base


def wait_ready(process: subprocess.Popen, options: ServerOptions, model: str, log: Path,
               timeout: float = 180) -> None:
    """Poll the model's readiness until it is ready, the server died or ``timeout`` passed."""
    url = f"http://{options.host}:{options.http_port}/v2/models/{model}/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BincamError(f"tritonserver stopped before the model was ready: {log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise BincamError(f"the model was not ready after {timeout:.0f} s: {log_tail(log)}")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when bincam dies (even by SIGKILL), so no server is orphaned."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def check_ports(options: ServerOptions) -> None:
    """One clear error if a port is taken (before Triton prints gRPC internals about it)."""
    for what, port in (("--http-port", options.http_port), ("--grpc-port", options.grpc_port)):
        with socket.socket() as s:
            try:
                s.bind((options.host, port))
            except OSError as exc:
                raise BincamError(f"{what} {port} on {options.host} is not free "
                                  f"({exc.strerror}); choose another") from None
    if options.http_port == options.grpc_port:
        raise BincamError("--http-port and --grpc-port must differ")


def log_tail(log: Path, lines: int = 3) -> str:
    """The last error lines of Triton's log (or its last lines), for a message."""
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    errors = [t for t in text if t[:1] == "E" or "error" in t.lower()]
    return " | ".join((errors or text)[-lines:])[:400] or "no log"


def run(env: ServingEnv, repository: Path, backends: Path, model: str, options: ServerOptions,
        log: Path, on_ready=None) -> tuple[int, bool]:
    """Run the server in the foreground until it exits; SIGINT/SIGTERM are passed on, so Triton
    drains in-flight requests (up to ``exit_timeout_s``; idle keep-alive connections also hold it
    that long). Returns its exit status and whether a signal asked it to stop."""
    admin_key = secrets.token_urlsafe(24)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    asked, holder = [], []

    def forward(signum, _frame):
        asked.append(signum)
        if holder and holder[0].poll() is None:
            holder[0].send_signal(signal.SIGTERM)

    for s in previous:  # before the server starts, so no signal is lost in between
        signal.signal(s, forward)
    try:
        with open(log, "ab") as sink:
            process = subprocess.Popen(
                command(env, repository, backends, model, options, admin_key), stdout=sink,
                stderr=subprocess.STDOUT, env=environment(env), start_new_session=True,
                preexec_fn=_die_with_parent)
    except OSError as exc:
        for s, handler in previous.items():
            signal.signal(s, handler)
        raise BincamError(f"cannot start {env.tritonserver} ({exc.strerror}); {SETUP}") from None
    holder.append(process)
    if asked:
        process.send_signal(signal.SIGTERM)
    try:
        wait_ready(process, options, model, log)
        if on_ready:
            on_ready()
        return process.wait(), bool(asked)
    except BaseException:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(options.exit_timeout_s + 5)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
