"""The fused epilogue's geometry on every GPU bincam claims (bincam.gpu.sweep_gpus): every
combination of GPU (A100, L4, L40S, H100 SXM/PCIe, H200, B200) × CAM tensor of the torchvision
and timm tables and the stress channel counts × layout × method × batch × attributes through
``launch_geometry`` with the invariants asserted, then one representative per kernel class run
on the CPU emulator under AddressSanitizer + UBSan and under ThreadSanitizer against the float64
reference. Results are written after every representative (a stopped run still reports what it
ran); ``--budget-s`` stops starting new representatives after that many seconds.

    python benchmarks/kernel_sweep_gpus.py --out benchmarks/results [--budget-s 3600]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bincam.files import write_atomic
from bincam.gpu.emulation import EmulationError, build_driver, run_cases
from bincam.gpu.launcher import kernel_source
from bincam.gpu.sweep import compare, failures
from bincam.gpu.sweep_gpus import (ATTRIBUTES, BATCHES, BLOCK, GPUS, STRESS_CHANNELS,
                                   enumerate_all, geometry_of, kernel_classes,
                                   representative_case, representatives, shrink, tensors)
from bincam.machine import machine_info, machine_line

SANITIZERS = ("address", "thread")


def run_one(drivers: dict, combo, index: int, parallel: bool) -> dict:
    """``combo``'s representative case under each sanitizer (both at once with ``parallel``:
    each run is its own process): pass/fail, errors, seconds."""
    case = representative_case(combo, index)
    row = {"combination": {**combo.__dict__, "cells": list(combo.cells), "size": list(combo.size)},
           "geometry": {k: v for k, v in geometry_of(combo).__dict__.items()},
           "mode": case.mode, "half_inputs": case.half_inputs}

    def one(sanitizer):
        t0 = time.perf_counter()
        try:
            (out,) = run_cases(drivers[sanitizer], [case], timeout=7200)
            errors = compare(case, out)
            bad = failures(errors)
            result = {"ok": not bad, "failures": bad, "worst": errors}
        except EmulationError as error:
            result = {"ok": False, "error": str(error)[-2000:]}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        return result

    with ThreadPoolExecutor(len(drivers) if parallel else 1) as pool:
        for sanitizer, result in zip(drivers, pool.map(one, drivers)):
            row[sanitizer] = result
    return row


def write(out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "kernel_sweep_gpus.json", json.dumps(record, indent=1).encode())
    e, rows = record["enumeration"], record["representatives"]
    ran = [r for r in rows if all(s in r for s in SANITIZERS)]
    covered = {json.dumps(c) for r in ran for c in r["classes"]}
    passed = {s: sum(r[s]["ok"] for r in ran) for s in SANITIZERS}
    lines = ["# The fused epilogue's geometry on every claimed GPU, and its classes on the CPU "
             "emulator", "",
             f"Machine: {machine_line(record['machine'])} (the kernels run on the CPU "
             "emulator, `bincam.gpu.emulation`, from the same source). Produced by "
             "`benchmarks/kernel_sweep_gpus.py` (`bincam.gpu.sweep_gpus`).", "",
             f"GPUs (SMs): {', '.join(f'{g} {n}' for g, n in GPUS.items())}; "
             f"{e['tensors']} CAM tensors ({e['table_tensors']} of the torchvision/timm tables, "
             f"C = {', '.join(map(str, STRESS_CHANNELS))} at 7×7 → 224×224); dense, factored "
             f"with and without the mask; 6 methods; batch {', '.join(map(str, BATCHES))}; "
             f"attributes {', '.join(map(str, ATTRIBUTES))}; block {BLOCK}.", "",
             "| step | count |", "|---|---|",
             f"| combinations through `launch_geometry` | {e['combinations']} |",
             f"| breaking an invariant (empty split, cover of [0, C), tile, shared memory ≤ 48 KiB, "
             f"grid limits, channels per split) | {e['broken']} |",
             f"| kernel classes (partials dense / factored, finish, energy, method × layout) | "
             f"{e['classes']} ({', '.join(f'{k} {v}' for k, v in e['classes_by_kernel'].items())}) |",
             f"| representatives covering every class | {e['representatives']} |",
             f"| representatives run (under both sanitizers) | {len(ran)} |",
             f"| classes covered by the runs | {len(covered)} of {e['classes']} |",
             *[f"| passed under {s} | {passed[s]} of {len(ran)} |" for s in SANITIZERS],
             f"| enumeration wall time | {e['seconds']:.1f} s |",
             f"| emulator wall time | {record['emulator_seconds']:.0f} s |", ""]
    worst = {}
    for r in ran:
        for s in SANITIZERS:
            for name, value in r[s].get("worst", {}).items():
                worst[name] = max(worst.get(name, 0), value)
    if worst:
        lines += ["Worst over the runs: " + ", ".join(f"{n} {v:.1e}" if isinstance(v, float)
                                                     else f"{n} {v}" for n, v in worst.items())
                  + " (limits: `bincam.gpu.sweep.LIMITS`).", ""]
    if record.get("stopped"):
        lines += [f"Stopped after the budget ({record['stopped']}): the remaining "
                  f"{e['representatives'] - len(ran)} representatives (the costliest to emulate: "
                  + "; ".join(record.get("not_run", [])) + ") were not run.", ""]
    lines += ["A representative with H×W = h×w is a *probe*: a claimed combination without its "
              "resize, which has the same partials and energy classes (`sweep_gpus.probe`).", "",
              "A representative with fewer channels C than its tensor has is a *channel probe* "
              "(`sweep_gpus.shrink`): the same classes with fewer channels.", "",
              "| # | GPU | tensor | C | h×w → H×W | layout | method | B | K | splits | tile | "
              "finish tiles | ASan | TSan | s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(ran):
        c, g = r["combination"], r["geometry"]
        layout = c["layout"] + ("" if c["layout"] == "dense" else
                                (", mask" if c["mask_positive"] else ", no mask"))
        lines.append(f"| {i} | {c['gpu']} | {c['tensor']} | {c['channels']} | "
                     f"{'×'.join(map(str, c['cells']))} → {'×'.join(map(str, c['size']))} | "
                     f"{layout} | {c['method']} | "
                     f"{c['batch']} | {c['attributes']} | {g['splits']} | {g['tile']} | "
                     f"{g['tiles']} | {'pass' if r['address']['ok'] else 'FAIL'} | "
                     f"{'pass' if r['thread']['ok'] else 'FAIL'} | "
                     f"{r['address']['seconds'] + r['thread']['seconds']:.0f} |")
    write_atomic(out / "kernel_sweep_gpus.md", ("\n".join(lines) + "\n").encode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no representative after this many seconds")
    ap.add_argument("--resume", action="store_true",
                    help="keep the representatives an earlier run of this kernel wrote to --out "
                         "and run the rest")
    ap.add_argument("--parallel", action="store_true",
                    help="run the two sanitizers of a representative at once (two cores)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    enum = enumerate_all()
    seconds = time.perf_counter() - t0
    assert not enum.broken, enum.broken[:5]
    reps = representatives(enum)
    by_kernel = {}
    for kernel, _ in enum.classes:
        by_kernel[kernel] = by_kernel.get(kernel, 0) + 1
    record = {"benchmark": "kernel_sweep_gpus", "machine": machine_info(),
              "enumeration": {"combinations": enum.combinations, "broken": len(enum.broken),
                              "classes": len(enum.classes), "classes_by_kernel": by_kernel,
                              "representatives": len(reps), "tensors": len(tensors()),
                              "table_tensors": len(tensors()) - len(STRESS_CHANNELS),
                              "seconds": seconds},
              "representatives": [], "emulator_seconds": 0.0, "stopped": None}
    record["kernel_sha256"] = hashlib.sha256(kernel_source().encode()).hexdigest()
    earlier = args.out / "kernel_sweep_gpus.json"
    if args.resume and earlier.is_file():
        kept = json.loads(earlier.read_text())
        if kept.get("kernel_sha256") != record["kernel_sha256"]:
            raise SystemExit("--resume: the earlier run is of another kernel source")
        for combo, row in zip(reps, kept["representatives"]):
            if row["combination"]["tensor"] != combo.tensor or \
                    row["combination"]["gpu"] != combo.gpu:
                break
            record["representatives"].append(row)
        record["emulator_seconds"] = kept.get("emulator_seconds", 0.0)
    # the representatives not run yet as their cheapest channel probes (sweep_gpus.shrink)
    reps = shrink(reps, enum, start=len(record["representatives"]))
    drivers = {s: build_driver(s) for s in SANITIZERS}
    start = time.perf_counter() - record["emulator_seconds"]
    budget_start = time.perf_counter()
    for i, combo in enumerate(reps):
        if i < len(record["representatives"]):
            continue
        if args.budget_s is not None and time.perf_counter() - budget_start > args.budget_s:
            record["stopped"] = f"--budget-s {args.budget_s:.0f}"
            record["not_run"] = [f"{c.gpu} {c.tensor} {c.layout} B={c.batch} K={c.attributes}"
                                 for c in reps[i:]]
            break
        row = run_one(drivers, combo, i, args.parallel)
        row["classes"] = [[kernel, key] for kernel, key in
                          kernel_classes(combo, geometry_of(combo)).items()
                          if (kernel, key) in enum.classes]  # a probe's own resize: not claimed
        record["representatives"].append(row)
        record["emulator_seconds"] = time.perf_counter() - start
        write(args.out, record)
        print(i, combo.gpu, combo.tensor, combo.layout, combo.method, combo.batch,
              combo.attributes, {s: row[s]["ok"] for s in SANITIZERS},
              round(row["address"]["seconds"] + row["thread"]["seconds"]), flush=True)
    write(args.out, record)


if __name__ == "__main__":
    main()
