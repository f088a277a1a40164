"""Load test of `bincam serve` (Triton, localhost only, bounded in time and count).

For each model — the shipped `models/synth-small-balanced` @112 and AFFACT @224 (random weights,
exported to ONNX here) — and with and without dynamic batching: start `bincam serve` on free
loopback ports, warm up, then C client threads send requests for `--seconds` (at most `--max-
requests`), each `--per-request` synthetic faces (1 and 8) as uint8 `pixels` asking for `logits`
and `energy` (a full explanation). Reported: throughput, p50/p95/p99 latency, errors (must be 0),
and the RSS of the server's processes (tritonserver + the Python stub) sampled every second, at the
end of warm-up and at the end. The in-process baseline: the same engine (ONNX Runtime, same
options) answering the same requests (batches of 1 and of 8 images), run by the serving
environment's Python as the server is (its numpy, no torch in the process), for `--seconds` (at
most 20), once before and once after the served runs of a model; the better of the two counts.

    python benchmarks/serve_load.py [--seconds 60] [--clients 4] [--out benchmarks/results/NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bincam.data.batches import synthetic_faces
from bincam.files import write_report
from bincam.machine import machine_info, machine_line

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_mib(pid: int) -> float:
    """RSS of ``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, list(children.get(pid, []))  # the server's processes, not the CLI itself
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def serve(model: Path, batching: bool, workdir: Path):
    http, grpc = free_port(), free_port()
    out = open(workdir / f"serve-{http}.out", "w+")
    args = [sys.executable, "-m", "bincam", "serve", str(model), "--http-port", str(http),
            "--grpc-port", str(grpc), "--env", str(ROOT / ".venv-serve"), "--max-batch", "16"]
    proc = subprocess.Popen(args + ([] if batching else ["--no-dynamic-batching"]),
                            stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        out.seek(0)
        if "ready:" in out.read():
            return proc, http
        if proc.poll() is not None:
            out.seek(0)
            raise SystemExit(f"bincam serve stopped: {out.read()[-2000:]}")
        time.sleep(0.5)
    raise SystemExit("bincam serve was not ready in 300 s")


def load(port: int, faces: np.ndarray, clients: int, seconds: float, max_requests: int,
         pid: int, per_request: int = 1) -> dict:
    import tritonclient.http as http

    latencies, errors, lock = [], [], threading.Lock()
    stop = time.monotonic() + seconds
    count = [0]

    def client_loop(k: int) -> None:
        client = http.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
        outputs = [http.InferRequestedOutput("logits"), http.InferRequestedOutput("energy")]
        i = k
        while time.monotonic() < stop:
            with lock:
                if count[0] >= max_requests:
                    break
                count[0] += 1
            face = np.stack([faces[(i * per_request + j) % len(faces)]
                             for j in range(per_request)])
            tensor = http.InferInput("pixels", list(face.shape), "UINT8")
            tensor.set_data_from_numpy(face)
            t0 = time.perf_counter()
            try:
                result = client.infer("bincam", [tensor], outputs=outputs)
                assert result.as_numpy("energy").shape[0] == per_request
                with lock:
                    latencies.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(repr(exc)[:200])
            i += clients
        client.close()

    rss = []
    sampler_stop = threading.Event()

    def sample() -> None:
        while not sampler_stop.wait(1.0):
            rss.append(tree_rss_mib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    sampler_stop.set()
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "error_examples": errors[:3],
            "seconds": wall, "throughput_rps": len(latencies) / wall,
            "images_per_s": len(latencies) * per_request / wall, "per_request": per_request,
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)), "rss_mib": rss}


def in_process_in_serving_env(model: Path, size: int, seconds: float) -> dict:
    """``in_process`` run by the serving environment's Python (the server's numpy, ONNX Runtime
    and threads, and no torch in the process), on the same faces."""
    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); import serve_load as s; "
            "from bincam.data.batches import synthetic_faces; "
            f"print(json.dumps(s.in_process({str(model)!r}, synthetic_faces(64, {size}, seed=3), "
            f"{seconds})))")
    out = subprocess.run([str(ROOT / ".venv-serve" / "bin" / "python"), "-c", code], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"in-process baseline failed: {out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def in_process(model: Path, faces: np.ndarray, seconds: float) -> dict:
    from bincam.runtime import open_engine
    from bincam.serve.handler import Handler, Request

    out = {}
    with open_engine(model, "ort") as engine:
        handler = Handler(engine)
        for batch in (1, 8):
            for _ in range(5):  # warm-up
                handler.handle([Request({"pixels": faces[:batch]}, ["logits", "energy"])])
            done, t0, i = 0, time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                chunk = np.stack([faces[(i + j) % len(faces)] for j in range(batch)])
                handler.handle([Request({"pixels": chunk}, ["logits", "energy"])])
                done, i = done + batch, i + batch
            out[f"batch {batch}"] = done / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=8)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-requests", type=int, default=100_000)
    ap.add_argument("--models", default="small,affact")
    ap.add_argument("--per-request", default="1,8", help="images per request (1 and/or 8)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        import torch

        from bincam.checkpoint import load_checkpoint
        from bincam.export.model import export_checkpoint, save_onnx
        from bincam.nets import build_net

        # both served and in-process runs take the same exported file
        save_onnx(export_checkpoint(load_checkpoint(ROOT / "models/synth-small-balanced")),
                  work / "small.onnx")
        models = {"small": ("synth-small-balanced @112", work / "small.onnx", 112)}
        if "affact" in args.models:
            torch.manual_seed(0)
            save_onnx(export_checkpoint(build_net("affact").eval()), work / "affact.onnx")
            models["affact"] = ("AFFACT @224 (random weights)", work / "affact.onnx", 224)
        for key in args.models.split(","):
            label, path, size = models[key]
            faces = synthetic_faces(64, size, seed=3)
            before = in_process_in_serving_env(path, size, min(20.0, args.seconds))
            served = []
            for batching in (True, False):
                proc, port = serve(path, batching, work)
                try:
                    for per_request in (int(n) for n in args.per_request.split(",")):
                        load(port, faces, args.clients, args.warmup, args.max_requests,
                             proc.pid, per_request)
                        warm_rss = tree_rss_mib(proc.pid)
                        result = load(port, faces, args.clients, args.seconds,
                                      args.max_requests, proc.pid, per_request)
                        result.update(model=label, dynamic_batching=batching,
                                      clients=args.clients, rss_after_warmup_mib=warm_rss)
                        served.append(result)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(90)
            after = in_process_in_serving_env(path, size, min(20.0, args.seconds))
            # the in-process figure: the better of a run before and one after the served runs
            baseline = {k: max(before[k], after[k]) for k in before}
            for result in served:
                same = baseline[f"batch {result['per_request']}"]
                result.update(in_process_images_per_s=baseline, in_process_runs=[before, after],
                              ratio_to_in_process=result["images_per_s"] / same)
                records.append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "rss_mib"}),
                      flush=True)
    info = machine_info()
    lines = [f"# bincam serve under load (Triton {args.clients} clients, {args.seconds:.0f} s)",
             "", f"Machine: {machine_line(info)}. `python benchmarks/serve_load.py --seconds "
             f"{args.seconds:g} --clients {args.clients}`. Each request: uint8 faces, outputs "
             "logits + energy (a full explanation); HTTP; server and clients on the same 2 cores.",
             "", "| model | dynamic batching | images / request | requests | errors | images/s | "
             "p50 ms | p95 ms | p99 ms | RSS after warm-up → end (max) MiB | in-process "
             "images/s, same batch | served / in-process |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        rss = r["rss_mib"] or [0]
        same = r["in_process_images_per_s"].get(f"batch {r['per_request']}", float("nan"))
        lines.append(f"| {r['model']} | {'on' if r['dynamic_batching'] else 'off'} | "
                     f"{r['per_request']} | {r['requests']} | {r['errors']} | "
                     f"{r['images_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['rss_after_warmup_mib']:.0f} → {rss[-1]:.0f} "
                     f"({max(rss):.0f}) | {same:.1f} | {r['ratio_to_in_process']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_report(args.out, text, {"machine": info, "records": records})


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
