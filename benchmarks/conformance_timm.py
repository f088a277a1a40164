"""Conformance of `bincam export --onnx` on timm classifiers: for each model (the smallest
variant of every family, random weights with BatchNorm statistics estimated, 5 classes, small
inputs), export it with torch's legacy exporter at opset 17, then at its usual Grad-CAM tensor
and at a mid-network tensor: append the gradients with `export_onnx_classifier` (``--tokens``
where the tensor is a transformer's tokens), run bincam's checks, compare the gradients of every
logit with float64 torch autograd at the engine's own activations, and time the gradient graph
against the forward pass (ONNX Runtime, CPU).

    nice python benchmarks/conformance_timm.py --out benchmarks/results/conformance_timm.md
    nice python benchmarks/conformance_timm.py --models vit_tiny_patch16_224 --merge

Every row ends as one of: **accepted correct** (checks pass, gradients within ``ACCURACY_LIMIT``
of float64 autograd, or at the float32 floor: each image within ``FLOOR_FACTOR`` × float32
torch autograd's own error, ``conformance_models.float32_floor``), **accepted unverified** (no unique torch module holds the tensor), **refused**
(bincam said why: an error or a failed check), **silently wrong** (accepted, gradients off: must
be 0), **crashed** (bincam raised something that is not its error, or the child process died or
hung: must be 0), **not exportable** (torch's own exporter failed: not bincam's) or **no tensor
found** (the harness could not locate a mid-network tensor). Each model
runs in a child process with a timeout. The reference: see `conformance_torchvision.py`; token
tensors are mapped to ``[B, C, h, w]`` the way the graph maps them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules below
from conformance_models import (  # noqa: E402
    FORWARD_FACTOR, MOVE_CAP, dense_gradients, float32_floor, forward_error, per_image_errors,
    reference_gradients, relative_errors, torch_site)
from conformance_timm_models import (  # noqa: E402
    FAMILY, MODELS, NUM_CLASSES, OPSET, build_timm, run_shapes, mid_tensor, to_maps,
    token_layout, usual_tensor)
from conformance_torchvision import _first_line, bincam_export, timings  # noqa: E402

# an accepted row's gradients are within ACCURACY_LIMIT (relative L2, worst image) of float64
# autograd, or each image's within FLOOR_FACTOR × torch's own float32 error on that image
ACCURACY_LIMIT, FLOOR_FACTOR = 1e-5, 4.0

VERDICTS = ("accepted correct", "accepted unverified", "refused", "silently wrong", "crashed",
            "not exportable", "no tensor found")


def export_legacy(model, size: int, path: Path) -> None:
    """``torch.onnx.export`` (TorchScript) at ``OPSET``, dynamic batch, input ``images``,
    output ``logits``; the exporter's chatter swallowed."""
    import torch

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(2, 3, size, size),), str(path), dynamo=False,
                          opset_version=OPSET, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})


def _raw_tensor(path: Path, tensor: str, x: np.ndarray) -> np.ndarray:
    """The value of ``tensor`` in the source ONNX on ``x`` (ONNX Runtime, forward only)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([tensor], {model.graph.input[0].name: x})[0]


def _load(path: Path):
    import onnx

    return onnx.load(str(path))


def tensor_row(model, path: Path, size: int, tensor: str, tokens: str, threads: int,
               timing_batch: int, timing_runs: int) -> dict:
    """Export at ``tensor``, checks, reference, timing: the row's fields."""
    import torch

    from bincam.export.checks import run_checks
    from bincam.runtime import open_engine

    row = {"cam_tensor": tensor, "tokens": tokens, "torch_site": None, "layout": None,
           "verdict": None, "detail": "", "failed_checks": [], "grad_rel_err": None,
           "grad_rel_err_per_logit": None, "time_run_s": None, "time_forward_s": None,
           "time_ratio": None, "seconds": {}}
    exported = bincam_export(row, "verdict", path, tensor, "logits", tokens=tokens)
    if exported is None:
        return row
    t = time.perf_counter()
    try:
        results = run_checks(exported)
    except Exception as exc:  # noqa: BLE001 - a check that cannot run is a defect
        row.update(verdict="crashed", detail=f"run_checks raised {exc.__class__.__name__}: "
                   f"{_first_line(exc)}", traceback=traceback.format_exc(limit=6))
        return row
    row["seconds"]["checks"] = round(time.perf_counter() - t, 2)
    row["failed_checks"] = [c.name for c in results if not c.ok]
    if row["failed_checks"]:
        row.update(verdict="refused", detail="; ".join(
            f"{c.name}: {c.detail}" + (f" — {c.advice}" if c.advice else "")
            for c in results if not c.ok)[:400])

    t = time.perf_counter()
    with open_engine(exported.SerializeToString(), "ort", threads=threads) as engine:
        row["layout"] = engine.info.gradient_layout
        rng = np.random.default_rng(0)
        x = np.concatenate([rng.random((2, 3, size, size), dtype=np.float32),
                            np.full((1, 3, size, size), 0.5, np.float32)])  # flat: ties
        out = engine.run(x)
        g = dense_gradients(engine, out)
        raw = found_by = out["activations"]  # found_by: the values the torch site is sought by
        if tokens == "swin":
            raw = found_by = raw.transpose(0, 2, 3, 1)
        elif tokens == "vit":  # the prefix tokens are not in the maps: from the source graph
            raw = _raw_tensor(path, tensor, x)
            # the graph's token → map order is the harness's (a wrong order is off by O(1); a
            # badly conditioned net, LeViT with random weights, by float32 noise × its scale)
            gap = float(np.abs(to_maps(raw, "vit", 1) - out["activations"]).max())
            if gap > 1e-2 * max(1.0, float(np.abs(raw).max())):
                row["reference"] = f"the maps differ from the source tensor's patch tokens " \
                    f"by {gap:.1e}"
            else:  # the patch tokens at the engine's own values, the prefix from the source
                found_by, raw = raw, raw.copy()
                patches = out["activations"].reshape(*out["activations"].shape[:2], -1)
                raw[:, raw.shape[1] - patches.shape[2]:] = patches.transpose(0, 2, 1)
        site = None if row.get("reference") else torch_site(model, torch.from_numpy(x),
                                                            found_by)
        consumers = sum(tensor in n.input for n in _load(path).graph.node)
        if site is not None and site[1] == "input" and consumers > 1:
            row["reference"] = (f"the tensor is {site[0]}'s input but also feeds {consumers - 1} "
                                "other node(s): a hook there would not see the whole gradient")
            site = None
        if site is None and not row.get("reference"):
            row["reference"] = ("no unique torch module's output or input equals the tensor "
                                "(none, or distinct tensors)")
        if site is not None:
            row["torch_site"] = f"{site[0]} ({site[1]})"
            ref_logits, ref = reference_gradients(model, site, x.astype(np.float64), raw)
            ref = to_maps(ref, tokens, 2)
            if g.shape != ref.shape:
                row["reference"] = f"shape {list(g.shape)} vs torch {list(ref.shape)}"
            elif not np.any(ref):
                row["reference"] = "torch's gradients are all zero: nothing to compare"
            else:
                row["grad_rel_err"], row["grad_rel_err_per_logit"] = relative_errors(g, ref)
                if not row["grad_rel_err"] <= ACCURACY_LIMIT:
                    floor = float32_floor(model, site, x, raw, ref,
                                          forward_error(out["logits"], ref_logits),
                                          lambda d: to_maps(d, tokens, 2))
                    row["float32_floor"] = float(floor.max())
                    row["within_float32_floor"] = bool(np.all(per_image_errors(g, ref) <= (
                        np.maximum(ACCURACY_LIMIT, FLOOR_FACTOR * floor))))
        row["seconds"]["reference"] = round(time.perf_counter() - t, 2)
        if row["verdict"] is None:
            t = time.perf_counter()
            xb = np.random.default_rng(1).random((timing_batch, 3, size, size), np.float32)
            row["time_run_s"], row["time_forward_s"], _ = timings(engine, xb, timing_runs, 0.2)
            row["time_ratio"] = row["time_run_s"] / row["time_forward_s"]
            row["seconds"]["timing"] = round(time.perf_counter() - t, 2)
    if row["verdict"] is None:
        err = row["grad_rel_err"]
        if err is None:
            row["verdict"] = "accepted unverified"
        else:
            ok = err <= ACCURACY_LIMIT or row.get("within_float32_floor", False)
            row["verdict"] = "accepted correct" if ok else "silently wrong"
    return row


def model_rows(name: str, size: int, threads: int = 1, timing_batch: int = 4,
               timing_runs: int = 3, overrides: dict | None = None) -> list[dict]:
    """The rows of one model: its usual Grad-CAM tensor and a mid-network tensor. Never raises
    for a model's problem."""
    import onnx
    import torch

    torch.set_num_threads(threads)
    base = {"model": name, "family": FAMILY.get(name, "?"), "size": None}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        try:
            model, s = build_timm(name, size, overrides)
            base["size"] = s
            export_legacy(model, s, path)
        except Exception as exc:  # noqa: BLE001 - torch's exporter failed: not bincam's
            return [dict(base, which=w, verdict="not exportable",
                         detail=f"{exc.__class__.__name__}: {_first_line(exc)}", seconds={})
                    for w in ("usual", "mid")]
        base["seconds_torch_export"] = round(time.perf_counter() - started, 2)
        source = onnx.load(str(path))
        shapes = run_shapes(source, s)
        normed = {n.input[0] for n in source.graph.node if n.op_type == "LayerNormalization"}
        tensors = {}
        for which, find in (("usual", lambda: usual_tensor(source, shapes)),
                            ("mid", lambda: mid_tensor(source, model, tensors.get("usual")))):
            try:
                tensors[which] = find()
            except LookupError as exc:
                tensors[which] = exc
        mid = tensors.get("mid")
        if isinstance(mid, str) and mid not in shapes:
            shapes.update(run_shapes(source, s, [mid]))
        swin_like = isinstance(tensors.get("usual"), str) and len(shapes.get(
            tensors["usual"], [])) == 4 and tensors["usual"] in normed
        del source
        rows = []
        for which, tensor in tensors.items():
            row = dict(base, which=which)
            if isinstance(tensor, LookupError):
                rows.append(dict(row, verdict="no tensor found", seconds={},
                                 detail=f"the harness found no {which} tensor: {tensor}"))
                continue
            shape = shapes.get(tensor, [])
            row["shape"] = ["B", *shape[1:]]
            tokens = token_layout(shape, tensor in normed or swin_like)
            try:
                row.update(tensor_row(model, path, s, tensor, tokens, threads, timing_batch,
                                      timing_runs))
            except Exception as exc:  # noqa: BLE001 - the engine or the reference failed
                row.update(cam_tensor=tensor, tokens=tokens, verdict="crashed", seconds={},
                           detail=f"{exc.__class__.__name__}: {_first_line(exc)}",
                           traceback=traceback.format_exc(limit=6))
            rows.append(row)
        return rows


def isolated_rows(name: str, size: int, threads: int, timeout: float) -> list[dict]:
    """``model_rows`` in a child process: a crash or a hang costs only this model's rows."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--size",
               str(size), "--threads", str(threads), "--child-out", str(out)]
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            detail = f"child exited with {proc.returncode}: " + " | ".join(
                (proc.stderr or proc.stdout).strip().splitlines()[-3:])[:300]
        except subprocess.TimeoutExpired:
            detail = f"timed out: no result within {timeout:.0f} s"
        if out.is_file():
            return json.loads(out.read_text())
        return [{"model": name, "family": FAMILY.get(name, "?"), "which": w,
                 "verdict": "crashed", "detail": detail,
                 "seconds": {"total": round(time.perf_counter() - started, 1)}}
                for w in ("usual", "mid")]


# --------------------------------------------------------------------------------------- report

def summarize(rows: list[dict]) -> dict:
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    usual = [r for r in rows if r["which"] == "usual"]
    accepted_usual = sum(r["verdict"].startswith("accepted") for r in usual)
    refusals = {}
    for r in rows:
        if r["verdict"] in ("refused", "crashed", "not exportable", "no tensor found"):
            refusals.setdefault(f"{r['verdict']}: {r['detail']}", []).append(
                f"{r['model']} ({r['which']})")
    correct = [r for r in rows if r["verdict"] == "accepted correct"]
    floor = sorted(f"{r['model']} ({r['which']})" for r in correct
                   if not r["grad_rel_err"] <= ACCURACY_LIMIT)
    errors = [r["grad_rel_err"] for r in correct if r["grad_rel_err"] <= ACCURACY_LIMIT]
    return {"models": len({r["model"] for r in rows}), "rows": len(rows), **counts,
            "accepted at the usual tensor": accepted_usual, "usual rows": len(usual),
            "accepted at the usual tensor, %": round(100 * accepted_usual / max(1, len(usual)),
                                                     1),
            "worst error of an accepted correct row": max(errors) if errors else None,
            "at the float32 floor": floor,
            "reasons": refusals}


def _fmt(value, spec=".1e") -> str:
    return "–" if value is None else format(value, spec)


def markdown(record: dict) -> str:
    s = record["summary"]
    runs = record["settings"]["runs"]
    lines = [
        "# bincam export --onnx on timm classifiers: conformance", "",
        f"Machine: {record['machine_line']}. timm {record['settings']['timm']}, torch "
        f"{record['settings']['torch']}. Produced by `benchmarks/conformance_timm.py` in "
        f"{len(runs)} run(s), {sum(r['wall_s'] for r in runs):.0f} s of wall time in all:", "",
        *[f"- `{r['command']}` — {r['models']} models, {r['wall_s']:.0f} s" for r in runs], "",
        f"Random weights (near-zero init made random: no identity blocks), BatchNorm statistics "
        f"estimated on random batches, {NUM_CLASSES} classes, torch legacy exporter at opset "
        f"{OPSET}, dynamic batch. Each model at its usual Grad-CAM tensor (the global pool's "
        "input; for transformers the last block's output, the final norm's input, with "
        "`--tokens vit|swin` where the tokens are a square grid) and at a mid-network tensor "
        "(the output of the middle `feature_info` module). *error*: relative L2 of the "
        "gradients of all logits (worst of 2 random images and 1 flat gray image) against "
        "float64 torch autograd at the ONNX engine's own activations (factored layouts expanded "
        "to dense). *grad/fwd*: median `engine.run` over median `engine.run_forward`, ONNX "
        f"Runtime CPU, batch 4, 1 thread. Accepted with an error above {ACCURACY_LIMIT:g} is "
        "**silently wrong** unless it is at the *float32 floor*: where it is above, the floor "
        "is measured the same way — float32 torch autograd at the engine's activations and at "
        "three copies moved by up to one float32 ulp, and float64 autograd at four copies moved "
        f"by {FORWARD_FACTOR}× the engine's own relative float32 error at the logits (at most "
        f"{MOVE_CAP:g}) — and every "
        f"image's error must be within {FLOOR_FACTOR:g}× the floor on that image (shown as "
        "*floor*: a ReLU input within float32 rounding of zero downstream of the tensor takes "
        "either side of the kink).", "",
        f"Summary: {s['models']} models, {s['rows']} rows — **{s['accepted correct']} accepted "
        f"correct**, {s['accepted unverified']} accepted without a torch reference, "
        f"{s['refused']} refused, **{s['silently wrong']} silently wrong**, **{s['crashed']} "
        f"crashed**, {s['not exportable']} not exportable by torch, {s['no tensor found']} where "
        "the harness found no mid-network tensor (its scope search). At the usual Grad-CAM "
        f"tensor: {s['accepted at the usual tensor']} of {s['usual rows']} accepted "
        f"({s['accepted at the usual tensor, %']} %). Worst error of an accepted correct row "
        f"within {ACCURACY_LIMIT:g}: {_fmt(s['worst error of an accepted correct row'])}; "
        f"{len(s.get('at the float32 floor', []))} at the float32 floor instead: "
        f"{', '.join(s.get('at the float32 floor', [])) or 'none'}.", ""]
    if s["reasons"]:
        lines += ["Refusals, crashes, failed exports:", ""]
        lines += [f"- {reason.replace('|', '/')} — {', '.join(where)}"
                  for reason, where in s["reasons"].items()]
        lines.append("")
    lines += ["| model | family | px | tensor | shape | tokens | torch module | layout | verdict "
              "| error | grad/fwd | s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        verdict = r["verdict"]
        if verdict not in ("accepted correct", "accepted unverified"):
            verdict = f"{verdict}: {r.get('detail', '')[:160]}"
        elif verdict == "accepted unverified":
            verdict = f"{verdict}: {r.get('reference', '')[:80]}"
        verdict = verdict.replace("|", "/")
        shape = "×".join(str(d) for d in r.get("shape", [])) or "–"
        lines.append(
            f"| {r['model']} | {r['family']} | {r.get('size') or '–'} | {r['which']}: "
            f"`{r.get('cam_tensor') or '–'}` | {shape} | {r.get('tokens') or '–'} | "
            f"{r.get('torch_site') or '–'} | {r.get('layout') or '–'} | {verdict} | "
            f"{_fmt(r.get('grad_rel_err'))}{_floor(r)} | {_fmt(r.get('time_ratio'), '.2f')} | "
            f"{sum(v for k, v in r.get('seconds', {}).items() if k != 'total'):.0f} |")
    return "\n".join(lines) + "\n"


def _floor(row: dict) -> str:
    return "" if row.get("float32_floor") is None else f" (floor {row['float32_floor']:.1e})"


def _line(row: dict) -> str:
    return (f"{row['model']:>34} {row['which']:>5} {row.get('tokens') or '-':>5} "
            f"{row.get('layout') or '-':>8} err {_fmt(row.get('grad_rel_err'))} "
            f"{row['verdict']}: {row.get('detail', '')[:120]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(n for n, _, _ in MODELS))
    ap.add_argument("--skip", default="")
    ap.add_argument("--size", type=int, default=96, help="input size where the model allows")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    ap.add_argument("--jobs", type=int, default=1, help="models run at once (child processes)")
    ap.add_argument("--out", default="benchmarks/results/conformance_timm.md")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of an existing JSON for models not run now")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--render", action="store_true",
                    help="only rewrite the MD (and summary) from the JSON beside --out")
    args = ap.parse_args(argv)
    if args.child:
        rows = model_rows(args.child, args.size, args.threads)
        Path(args.child_out).write_text(json.dumps(rows))
        return 0

    out = Path(args.out)
    if args.render:  # the verdict names of older rows, then the table again
        record = json.loads(out.with_suffix(".json").read_text())
        for r in record["rows"]:
            if r["verdict"] == "not exportable" and "found by the harness" in r["detail"]:
                r["verdict"] = "no tensor found"
        record["summary"] = summarize(record["rows"])
        write_outputs(out, record)
        return 0

    import timm
    import torch

    from bincam.machine import machine_info, machine_line

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    skip = {m.strip() for m in args.skip.split(",") if m.strip()}
    models = [m.strip() for m in args.models.split(",") if m.strip() and m.strip() not in skip]
    out = Path(args.out)
    runs, old = [], []
    if args.merge and out.with_suffix(".json").is_file():
        previous = json.loads(out.with_suffix(".json").read_text())
        runs, old = previous["settings"]["runs"], previous["rows"]
    command = "python benchmarks/conformance_timm.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    run = {"command": command, "wall_s": 0.0, "models": len(models)}
    runs.append(run)
    info = machine_info()
    order = {n: i for i, (n, _, _) in enumerate(MODELS)}
    started = time.perf_counter()
    rows = [r for r in old if r["model"] not in set(models)]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # children do the work
        futures = [pool.submit(isolated_rows, name, args.size, args.threads, args.timeout)
                   for name in models]
        for future in as_completed(futures):
            new = future.result()
            for r in new:
                print(_line(r), flush=True)
            rows = [r for r in rows if r["model"] != new[0]["model"]] + new
            rows.sort(key=lambda r: (order.get(r["model"], len(order)), r["model"],
                                     r["which"] != "usual"))
            run["wall_s"] = round(time.perf_counter() - started, 1)
            record = {"benchmark": "conformance_timm", "machine": info,
                      "machine_line": machine_line(info),
                      "settings": {"runs": runs, "size": args.size, "threads": args.threads,
                                   "jobs": args.jobs, "opset": OPSET, "classes": NUM_CLASSES,
                                   "accuracy_limit": ACCURACY_LIMIT,
                                   "floor_factor": FLOOR_FACTOR, "timm": timm.__version__,
                                   "torch": torch.__version__},
                      "summary": summarize(rows), "rows": rows}
            write_outputs(out, record)  # after every model: a partial table survives
    s = summarize(rows)
    print(json.dumps({k: v for k, v in s.items() if k != "reasons"}))
    return 1 if s["silently wrong"] or s["crashed"] else 0


def write_outputs(out: Path, record: dict) -> None:
    from bincam.files import write_atomic

    write_atomic(out.with_suffix(".json"), (json.dumps(record, indent=1) + "\n").encode())
    write_atomic(out.with_suffix(".md"), markdown(record).encode())


if __name__ == "__main__":
    sys.exit(main())
