"""The fused epilogue's kernels on the CPU emulator (bincam.gpu.emulation): the full sweep
(every method × layout × mode × mask choice on every shape of bincam.gpu.sweep, 270 cases) under
AddressSanitizer + UBSan and under ThreadSanitizer against the float64 reference, and the
mutation test for every __syncthreads() of the source (each removed in turn must fail the
harness: a ThreadSanitizer report, a sanitizer abort or a wrong output), and the GPU check's own
configuration (AFFACT @224: B=8, K=40, C=2048, 7×7; every method and layout, gpu.check's inputs
and limits) on a plain -O2 build, so the limits a GPU run is held to are known to be met by
the kernel's arithmetic. Writes JSON + Markdown.

    python benchmarks/kernel_emulation_sweep.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from bincam.gpu.check import emulated_check
import numpy as np

from bincam.gpu.emulation import Case, EmulationError, build_driver, run_cases
from bincam.gpu.launcher import kernel_source
from bincam.gpu.sweep import LIMITS, compare, failures, sweep_cases
from bincam.machine import machine_info, machine_line


def sweep(sanitizer: str, cases) -> dict:
    t0 = time.perf_counter()
    driver = build_driver(sanitizer)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = run_cases(driver, cases, timeout=3600)
    run_s = time.perf_counter() - t0
    worst, failed = {}, []
    for i, (case, out) in enumerate(zip(cases, outs)):
        errors = compare(case, out)
        for name, value in errors.items():
            worst[name] = max(worst.get(name, 0), value)
        if failures(errors):
            failed.append({"case": i, "method": case.method, "layout": case.layout,
                           "mode": case.mode, "block": case.block, **failures(errors)})
    return {"sanitizer": sanitizer, "cases": len(cases), "build_s": build_s, "run_s": run_s,
            "worst": worst, "failed": failed}


def empty_split_cases() -> list[Case]:
    """C = 9 over 4 forced splits (the last empty), dense and factored: the launches where
    only the barrier after zeroing orders the accumulators' final read."""
    rng = np.random.default_rng(9)
    cases = []
    for layout in ("dense", "factored"):
        grads = rng.standard_normal((1, 2, 9, 3, 3) if layout == "dense" else (2, 9))
        cases.append(Case(rng.standard_normal((1, 9, 3, 3)), grads, rng.standard_normal((1, 2)),
                          (5, 5), "gradcam", layout, masks=rng.random((2, 5, 5)) < 0.5,
                          block=40, overrides={"splits": 4}))
    return cases


def mutations(cases) -> list[dict]:
    source = kernel_source()
    spots = [m.start() for m in re.finditer(r"__syncthreads\(\);", source)]
    rows = []
    for spot in spots:
        line = source[:spot].count("\n") + 1
        mutant = source[:spot] + "/* removed */" + source[spot + len("__syncthreads();"):]
        text = source.splitlines()[line - 1].strip()
        try:
            outs = run_cases(build_driver("thread", mutant), cases, timeout=600)
            wrong = sum(bool(failures(compare(c, o))) for c, o in zip(cases, outs))
            caught = f"wrong outputs in {wrong} cases" if wrong else "NOT caught"
        except EmulationError as error:
            caught = "ThreadSanitizer data race" if "data race" in str(error) else \
                str(error).splitlines()[1][:80]
        rows.append({"line": line, "code": text, "caught": caught})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    cases = sweep_cases(full=True, seed=7)
    runs = [sweep("address", cases), sweep("thread", cases)]
    muts = mutations([c for c in sweep_cases(seed=3) if c.block in (32, 64, 128)][:12]
                     + empty_split_cases())
    gpu = emulated_check(build_driver(None))
    record = {"benchmark": "kernel_emulation_sweep", "machine": machine_info(), "limits": LIMITS,
              "sweeps": runs, "mutations": muts, "gpu_check_configuration": gpu}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_emulation_sweep.json").write_text(json.dumps(record, indent=1))
    lines = ["# Fused epilogue kernels on the CPU emulator", "",
             f"Machine: {machine_line(record['machine'])}. Produced by "
             "`benchmarks/kernel_emulation_sweep.py`.", "",
             "| sanitizer | cases | build s | run s | failed | worst maps max abs | worst raw "
             "max abs | worst energy rel |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['sanitizer']} | {r['cases']} | {r['build_s']:.0f} | {r['run_s']:.0f} | "
              f"{len(r['failed'])} | {r['worst']['maps max abs']:.1e} | "
              f"{r['worst']['raw max abs']:.1e} | {r['worst']['energy rel']:.1e} |" for r in runs]
    lines += ["", "Mutation test (each `__syncthreads()` removed in turn, ThreadSanitizer build):",
              "", "| line | code | caught by |", "|---|---|---|"]
    lines += [f"| {m['line']} | `{m['code']}` | {m['caught']} |" for m in muts]
    lines += ["", "The GPU check's configuration (B=8, K=40, C=2048, 7×7 → 224×224, its inputs with "
              "torch's CPU generator, seed 0; plain -O2 build) against its limits (raw rel, maps "
              "and PE max abs 1e-5; fp16 maps 1e-3; u8 1):", "",
              "| layout | method | raw rel | maps max abs | PE max abs | fp16 max abs | u8 max diff "
              "| ok |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {g['layout']} | {g['method']} | {g['raw rel']:.1e} | {g['maps max abs']:.1e} | "
              f"{g['PE max abs']:.1e} | {g['fp16 maps max abs']:.1e} | "
              f"{g['uint8 maps max diff']} | {'yes' if g['ok'] else 'NO'} |" for g in gpu]
    text = "\n".join(lines) + "\n"
    (args.out / "kernel_emulation_sweep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
