"""The bias audit of the two shipped models on a fresh synthetic test split of 10,000 faces.

Writes the synthetic split if missing (``bincam data synth --n 10000 --seed 1 --split test``:
faces the models never saw), runs ``bincam analyze`` for both models with ONNX Runtime, and
copies the readable part of the output (report, tables, plots, aggregates, timing; not the
shards and per-image results) to ``--keep``.

    python benchmarks/analyze_synth.py --work runs/analyze_synth10k \\
        --keep benchmarks/results/analyze_synth10k
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from bincam.analysis import AnalyzeOptions, analyze
from bincam.data.synth import synthesize

KEEP = ("report.md", "report.html", "aggregates.json", "timing.json", "tables", "plots")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/synth_test10k")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--work", required=True, help="analysis output folder (resumable)")
    ap.add_argument("--keep", required=True, help="where the report files are copied")
    ap.add_argument("--engine", default="ort")
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "celeba").is_dir():
        synthesize(data, args.n, seed=1, workers=2, split="test")
    record = analyze(AnalyzeOptions(["unbalanced=models/synth-small-unbalanced",
                                     "balanced=models/synth-small-balanced"],
                                    f"synth:{data}", Path(args.work), engine=args.engine))
    keep = Path(args.keep)
    if keep.exists():
        shutil.rmtree(keep)
    keep.mkdir(parents=True)
    for name in KEEP:
        src = Path(args.work) / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, keep / name)
    print((keep / "tables" / "headline.md").read_text())
    print(f"{record['images']} images; report: {keep / 'report.md'}")


if __name__ == "__main__":
    main()
