"""Conformance of `bincam export --onnx` on torchvision classifiers: for each model (random
weights, 40 classes, small inputs) and each exporter (`torch.onnx.export` legacy TorchScript and
dynamo), export the model, pick its usual Grad-CAM tensor from the ONNX graph, append the
gradients with `export_onnx_classifier`, run bincam's own checks (`run_checks`, torch-free), and
compare the gradients of every logit with float64 torch autograd at the engine's own activations;
time the gradient graph against the forward pass with ONNX Runtime on this CPU.

    python benchmarks/conformance_torchvision.py --exporters legacy \
        --out benchmarks/results/conformance_torchvision.md
    python benchmarks/conformance_torchvision.py --models resnet18,vit_tiny --exporters dynamo \
        --merge --out benchmarks/results/conformance_torchvision.md

A row is "silently wrong" when every check passes but the gradients are off by more than
`SILENT_LIMIT` (relative L2, worst image): such rows are marked in the table and make the script
exit with status 1.

The reference: the torch net is run in float64 with a forward hook that replaces the output of
the module whose output *is* the ONNX CAM tensor (found by value, among modules called once) by a
leaf tensor holding the ONNX engine's own activations, so the comparison measures the appended
gradient subgraph alone, free of the forward's float32 rounding. Factored layouts are expanded
to dense first (``W[k,c]·1[A>0]`` where ``mask_positive``, else ``W[k,c]``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module below
from conformance_models import (  # noqa: E402
    DEFAULT_MODELS, NUM_CLASSES, build_model, cam_tensor, dense_gradients, export_torch,
    family_of, reference_gradients, relative_errors, sizes_for, torch_site)

SILENT_LIMIT = 1e-3  # relative L2 of the gradients (worst image) above which an ok row is wrong
EXPORTERS = ("legacy", "dynamo")

# -------------------------------------------------------------------------------------- one row

def bincam_export(row: dict, verdict_key: str, path, tensor: str, logits: str, **options):
    """``export_onnx_classifier``'s model, timed into ``row["seconds"]``; or ``None`` with
    ``row[verdict_key]`` ``refused`` (a ``BincamError``: bincam's one-line answer) or ``crashed``
    (anything else: a bincam defect, with its traceback)."""
    from bincam.errors import BincamError
    from bincam.export.model import export_onnx_classifier

    started = time.perf_counter()
    try:
        return export_onnx_classifier(path, tensor, logits, **options)
    except BincamError as exc:
        row.update({verdict_key: "refused", "detail": _first_line(exc)})
    except Exception as exc:  # noqa: BLE001 - not a BincamError: a bincam defect
        row.update({verdict_key: "crashed", "detail": f"export_onnx_classifier raised "
                    f"{exc.__class__.__name__}: {_first_line(exc)}",
                    "traceback": traceback.format_exc(limit=6)})
    finally:
        row["seconds"]["bincam export"] = round(time.perf_counter() - started, 2)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:200]


def timings(engine, images: np.ndarray, runs: int = 5, min_seconds: float = 0.3
            ) -> tuple[float, float, int]:
    """Median seconds of ``engine.run`` and of ``engine.run_forward`` on ``images``, the two
    interleaved (drifts in the machine's load hit both alike), after a warm-up of each (which
    also builds the forward-only session); at least ``runs`` pairs, more for fast models (up to
    50, about ``min_seconds`` of ``run`` in all)."""
    engine.run(images), engine.run_forward(images)
    started = time.perf_counter()
    engine.run(images)
    once = time.perf_counter() - started
    n = int(min(50, max(runs, np.ceil(min_seconds / max(once, 1e-6)))))
    full, forward = [], []
    for _ in range(n):
        t = time.perf_counter()
        engine.run(images)
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        engine.run_forward(images)
        forward.append(time.perf_counter() - t)
    return float(np.median(full)), float(np.median(forward)), n


def conformance_row(name: str, exporter: str, size: int = 64, threads: int = 1,
                    timing_batch: int = 8, timing_runs: int = 5, workdir: Path | None = None,
                    checks: bool = True) -> dict:
    """One (model, exporter) row: export, CAM tensor, bincam export + checks, gradient error
    against float64 torch autograd, gradient/forward time ratio. Never raises for a model's
    problem: the row's ``status`` and ``detail`` say what happened."""
    import torch

    from bincam.export.checks import run_checks
    from bincam.runtime import open_engine

    torch.set_num_threads(threads)
    family = family_of(name)
    row = {"model": name, "exporter": exporter, "family": family, "size": None,
           "cam_tensor": None, "torch_site": None, "layout": None, "status": None, "detail": "",
           "failed_checks": [], "checks": [], "grad_rel_err": None, "grad_rel_err_per_logit": None,
           "logits_max_rel_vs_torch": None, "time_run_s": None, "time_forward_s": None,
           "time_ratio": None, "silently_wrong": False, "seconds": {}}
    started = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(dir=workdir)
    path = Path(tmp.name) / f"{name}-{exporter}.onnx"
    try:
        # 1. the torch net and its ONNX export (at the smallest size that works)
        t = time.perf_counter()
        errors = []
        for size_try in sizes_for(name, size):
            try:
                model = build_model(name, size_try)
                with torch.no_grad():
                    model(torch.rand(1, 3, size_try, size_try))
                export_torch(model, size_try, exporter, path)
                row["size"] = size_try
                break
            except Exception as exc:  # noqa: BLE001 - any exporter failure is a row's result
                errors.append(f"{size_try}px: {exc.__class__.__name__}: {_first_line(exc)}")
        row["seconds"]["torch export"] = round(time.perf_counter() - t, 2)
        if row["size"] is None:
            row.update(status="exporter failed", detail="; ".join(errors))
            return row
        if errors:
            row["detail"] = f"at {row['size']} px ({'; '.join(errors)})"

        # 2. the CAM tensor
        import onnx

        source = onnx.load(str(path))
        try:
            row["cam_tensor"] = cam_tensor(source, family)
        except LookupError as exc:
            row.update(status="no CAM tensor", detail=str(exc))
            return row
        logits_name = source.graph.output[0].name
        del source

        # 3. bincam: gradients appended, then its own checks
        exported = bincam_export(row, "status", path, row["cam_tensor"], logits_name)
        if exported is None:
            return row
        if checks:
            t = time.perf_counter()
            try:
                results = run_checks(exported)
            except Exception as exc:  # noqa: BLE001 - a check that cannot run fails loudly
                results = None
                row.update(status="checks crashed", detail=f"run_checks raised "
                           f"{exc.__class__.__name__}: {_first_line(exc)}",
                           traceback=traceback.format_exc(limit=6))
            row["seconds"]["checks"] = round(time.perf_counter() - t, 2)
            if results is not None:
                row["checks"] = [{"name": c.name, "ok": bool(c.ok), "detail": c.detail}
                                 for c in results]
                row["failed_checks"] = [c.name for c in results if not c.ok]
                row["status"] = "checks failed" if row["failed_checks"] else "ok"
                if row["failed_checks"]:
                    row["detail"] = "; ".join(f"{c.name}: {c.detail}" for c in results
                                              if not c.ok)[:400]
        else:
            row["status"] = "ok (unchecked)"

        # 4. gradients vs float64 torch autograd at the engine's own activations
        t = time.perf_counter()
        try:
            with open_engine(exported.SerializeToString(), "ort", threads=threads) as engine:
                row["layout"] = engine.info.gradient_layout
                rng = np.random.default_rng(0)
                s = row["size"]
                x = np.concatenate([rng.random((2, 3, s, s), dtype=np.float32),
                                    np.full((1, 3, s, s), 0.5, np.float32)])  # flat: ties
                out = engine.run(x)
                g = dense_gradients(engine, out)
                site = torch_site(model, torch.from_numpy(x), out["activations"])
                if site is None:
                    row["reference"] = ("no unique torch module's output or input equals "
                                        "the ONNX CAM tensor (none, or distinct tensors)")
                else:
                    row["torch_site"] = f"{site[0]} ({site[1]})"
                    ref_logits, ref = reference_gradients(model, site, x.astype(np.float64),
                                                          out["activations"])
                    if g.shape != ref.shape:
                        row["reference"] = f"shape {list(g.shape)} vs torch {list(ref.shape)}"
                    elif not np.any(ref):
                        row["reference"] = "torch's gradients are all zero: nothing to compare"
                    else:
                        row["grad_rel_err"], row["grad_rel_err_per_logit"] = \
                            relative_errors(g, ref)
                        # how much the true gradient changes between the two random images
                        # (0 for a factored head without a ReLU mask: constant by nature)
                        row["reference_input_variation"] = float(
                            np.linalg.norm(ref[0] - ref[1]) / np.linalg.norm(ref[1]))
                    with torch.no_grad():
                        z = model(torch.from_numpy(x)).numpy()
                    row["logits_max_rel_vs_torch"] = float(
                        np.abs(out["logits"] - z).max() / max(np.abs(z).max(), 1e-30))
                row["seconds"]["reference"] = round(time.perf_counter() - t, 2)

                # 5. gradient graph vs forward, ORT CPU, batch 8
                t = time.perf_counter()
                xb = np.random.default_rng(1).random((timing_batch, 3, s, s), dtype=np.float32)
                row["time_run_s"], row["time_forward_s"], row["timing_runs"] = timings(
                    engine, xb, timing_runs)
                row["time_ratio"] = row["time_run_s"] / row["time_forward_s"]
                row["seconds"]["timing"] = round(time.perf_counter() - t, 2)
        except Exception as exc:  # noqa: BLE001 - report, do not stop the run
            row["reference"] = f"{exc.__class__.__name__}: {_first_line(exc)}"
            row.setdefault("traceback", traceback.format_exc(limit=6))
        err = row["grad_rel_err"]
        row["silently_wrong"] = bool(row["status"] == "ok" and err is not None and
                                     not err <= SILENT_LIMIT)  # NaN counts as wrong
        return row
    finally:
        tmp.cleanup()
        row["seconds"]["total"] = round(time.perf_counter() - started, 2)


def run_conformance(models, exporters, size: int = 64, threads: int = 1, isolate: bool = False,
                    row_timeout: float = 900.0, log=print, **options) -> list[dict]:
    """Rows for every (model, exporter); ``isolate`` runs each in a child process (a crash or a
    hang of one model then costs only its row)."""
    rows = []
    for name in models:
        for exporter in exporters:
            if isolate:
                row = _isolated_row(name, exporter, size, threads, row_timeout, options)
            else:
                row = conformance_row(name, exporter, size, threads, **options)
            rows.append(row)
            if log:
                log(_summary_line(row))
    return rows


def _isolated_row(name, exporter, size, threads, timeout, options) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--row", f"{name}:{exporter}",
               "--size", str(size), "--threads", str(threads), "--row-out", str(out),
               "--timing-runs", str(options.get("timing_runs", 5)),
               "--timing-batch", str(options.get("timing_batch", 8))]
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"model": name, "exporter": exporter, "family": family_of(name),
                    "status": "timed out", "detail": f"no result within {timeout:.0f} s",
                    "silently_wrong": False, "seconds": {"total": round(timeout, 1)}}
        if out.is_file():
            return json.loads(out.read_text())
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"model": name, "exporter": exporter, "family": family_of(name),
                "status": "crashed", "silently_wrong": False,
                "detail": f"child exited with {proc.returncode}: {' | '.join(tail)[:300]}",
                "seconds": {"total": round(time.perf_counter() - started, 1)}}


# --------------------------------------------------------------------------------------- report

def _fmt(value, spec=".1e") -> str:
    return "–" if value is None else format(value, spec)


def _status_cell(row) -> str:
    status = row["status"]
    if row.get("silently_wrong"):
        return f"**⚠ SILENTLY WRONG** (checks ok, error {row['grad_rel_err']:.1e})"
    if status == "ok":
        return "ok"
    if status == "checks failed":
        return f"checks failed: {', '.join(row.get('failed_checks', []))}"
    return f"{status}: {row.get('detail', '')}"


def _summary_line(row) -> str:
    return (f"{row['model']:>20} {row['exporter']:>6} {row.get('size') or '-':>4}px "
            f"{row.get('layout') or '-':>8} err {_fmt(row.get('grad_rel_err'))} "
            f"ratio {_fmt(row.get('time_ratio'), '.2f')} [{row['seconds'].get('total', 0):.0f} s] "
            f"{_status_cell(row)[:150]}")


def summarize(rows: list[dict]) -> dict:
    def count(status):
        return sum(r["status"] == status for r in rows)

    refusals = {}
    for r in rows:
        if r["status"] == "refused":
            refusals.setdefault(r["detail"], []).append(f"{r['model']}/{r['exporter']}")
    return {"rows": len(rows), "ok": count("ok"), "refused": count("refused"),
            "refusal reasons": refusals, "checks failed": count("checks failed"),
            "checks crashed": count("checks crashed"), "crashed": count("crashed"),
            "exporter failed": count("exporter failed"), "no CAM tensor": count("no CAM tensor"),
            "timed out": count("timed out"),
            "silently wrong": sum(bool(r.get("silently_wrong")) for r in rows),
            "unverified ok": sum(r["status"] == "ok" and r.get("grad_rel_err") is None
                                 for r in rows)}


def markdown(record: dict) -> str:
    s = record["summary"]
    lines = [
        "# bincam export --onnx on torchvision classifiers: conformance", "",
        f"Machine: {record['machine_line']}. Produced by `benchmarks/conformance_torchvision.py`"
        f" in {len(record['settings']['runs'])} run(s), "
        f"{sum(r['wall_s'] for r in record['settings']['runs']):.0f} s of wall time in all:", "",
        *[f"- `{r['command']}` — {r['rows']} rows, {r['wall_s']:.0f} s"
          for r in record["settings"]["runs"]], "",
        f"Random weights, {NUM_CLASSES} classes, opset 18, dynamic batch. *error*: relative L2 "
        "of the gradients of all logits (worst of 2 random images and 1 flat gray image) against "
        "float64 torch autograd at the ONNX engine's own activations (factored layouts expanded "
        f"to dense). *grad/fwd*: median `engine.run` over median `engine.run_forward` "
        f"(interleaved, ≥ {record['settings']['timing_runs']} pairs, more for fast models), "
        f"ONNX Runtime CPU, batch {record['settings']['timing_batch']}, "
        f"{record['settings']['threads']} thread(s). Checks: `run_checks` (structure, TensorRT "
        "lint, torch-free self-checks, input dependence). A row whose checks pass with an error "
        f"above {SILENT_LIMIT:g} is **silently wrong**.", "",
        f"Summary: {s['rows']} rows — {s['ok']} ok ({s['unverified ok']} of them without a torch "
        f"reference), {s['refused']} refused, {s['checks failed']} checks failed, "
        f"{s['checks crashed'] + s['crashed']} crashed, {s['exporter failed']} exporter failed, "
        f"{s['no CAM tensor']} without a CAM tensor, {s['timed out']} timed out; "
        f"**{s['silently wrong']} silently wrong**.", ""]
    silent = [f"{r['model']}/{r['exporter']}" for r in record["rows"] if r.get("silently_wrong")]
    if silent:
        lines += [f"**⚠ SILENTLY WRONG (checks passed, gradients off by more than "
                  f"{SILENT_LIMIT:g}): {', '.join(silent)}**", ""]
    if s["refusal reasons"]:
        lines += ["Refusals:", ""]
        lines += [f"- {reason} — {', '.join(where)}" for reason, where in
                  s["refusal reasons"].items()]
        lines.append("")
    lines += ["| model | exporter | px | CAM tensor (torch module) | layout | status | error | "
              "grad/fwd | s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        site = f" ({r['torch_site']})" if r.get("torch_site") else ""
        err = _fmt(r.get("grad_rel_err"))
        if r.get("grad_rel_err") is None and r.get("reference") and r["status"] not in (
                "refused", "exporter failed", "crashed", "no CAM tensor"):
            err = f"– ({r['reference'][:80]})"
        cell = _status_cell(r).replace("|", "\\|")
        lines.append(f"| {r['model']} | {r['exporter']} | {r.get('size') or '–'} | "
                     f"`{r.get('cam_tensor') or '–'}`{site} | {r.get('layout') or '–'} | "
                     f"{cell} | {err} | {_fmt(r.get('time_ratio'), '.2f')} | "
                     f"{r['seconds'].get('total', 0):.0f} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, record: dict) -> None:
    from bincam.files import write_atomic

    out = Path(out)
    write_atomic(out.with_suffix(".json"), (json.dumps(record, indent=1) + "\n").encode())
    write_atomic(out.with_suffix(".md"), markdown(record).encode())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="comma-separated torchvision model names (and vit_tiny, swin_tiny, "
                         "maxvit_tiny)")
    ap.add_argument("--skip", default="", help="comma-separated models to leave out")
    ap.add_argument("--exporters", default="legacy,dynamo")
    ap.add_argument("--size", type=int, default=64, help="input size where the model allows")
    ap.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads")
    ap.add_argument("--timing-batch", type=int, default=8)
    ap.add_argument("--timing-runs", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/conformance_torchvision.md",
                    help="MD file; the JSON goes beside it")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of an existing JSON for (model, exporter) pairs not run")
    ap.add_argument("--no-isolate", action="store_true",
                    help="run every row in this process (default: one child process per row)")
    ap.add_argument("--row-timeout", type=float, default=900.0, help="seconds per row (isolated)")
    ap.add_argument("--row", help=argparse.SUPPRESS)      # child mode: MODEL:EXPORTER
    ap.add_argument("--row-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.row:  # child process of an isolated run
        name, exporter = args.row.split(":")
        row = conformance_row(name, exporter, args.size, args.threads, args.timing_batch,
                              args.timing_runs)
        Path(args.row_out).write_text(json.dumps(row))
        return 0

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    skip = {m.strip() for m in args.skip.split(",") if m.strip()}
    models = [m.strip() for m in args.models.split(",") if m.strip() and m.strip() not in skip]
    exporters = [e.strip() for e in args.exporters.split(",") if e.strip()]
    bad = sorted(set(exporters) - set(EXPORTERS))
    if bad:
        ap.error(f"unknown exporter(s) {', '.join(bad)}; choose from {', '.join(EXPORTERS)}")
    started = time.perf_counter()
    rows = run_conformance(models, exporters, args.size, args.threads,
                           isolate=not args.no_isolate, row_timeout=args.row_timeout,
                           timing_batch=args.timing_batch, timing_runs=args.timing_runs)
    wall = time.perf_counter() - started
    out = Path(args.out)
    command = "python benchmarks/conformance_torchvision.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    runs = [{"command": command, "wall_s": round(wall, 1), "rows": len(rows)}]
    if args.merge and out.with_suffix(".json").is_file():
        previous = json.loads(out.with_suffix(".json").read_text())
        old = previous["rows"]
        runs = previous["settings"].get("runs", []) + runs
        done = {(r["model"], r["exporter"]) for r in rows}
        rows = [r for r in old if (r["model"], r["exporter"]) not in done] + rows
        order = {m: i for i, m in enumerate(list(DEFAULT_MODELS) + models)}
        rows.sort(key=lambda r: (order.get(r["model"], len(order)), r["model"],
                                 EXPORTERS.index(r["exporter"])
                                 if r["exporter"] in EXPORTERS else 9))
    from bincam.machine import machine_info, machine_line

    info = machine_info()
    record = {"benchmark": "conformance_torchvision", "machine": info,
              "machine_line": machine_line(info),
              "settings": {"runs": runs, "size": args.size, "threads": args.threads,
                           "timing_batch": args.timing_batch, "timing_runs": args.timing_runs,
                           "silent_limit": SILENT_LIMIT},
              "summary": summarize(rows), "rows": rows}
    write_outputs(out, record)
    s = record["summary"]
    print(f"{s['rows']} rows: {s['ok']} ok, {s['refused']} refused, {s['checks failed']} checks "
          f"failed, {s['crashed'] + s['checks crashed']} crashed, {s['exporter failed']} exporter "
          f"failed, {s['silently wrong']} SILENTLY WRONG; {wall:.0f} s; wrote "
          f"{out.with_suffix('.md')} and {out.with_suffix('.json')}")
    silent = [f"{r['model']}/{r['exporter']}" for r in rows if r.get("silently_wrong")]
    if silent:
        print(f"SILENTLY WRONG: {', '.join(silent)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
