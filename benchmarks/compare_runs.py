"""Do two runs of the same `bincam bench` command agree? For every ratio both report, the runs
agree when their ranges over rounds intersect (`bincam.bench.stats.bands_overlap`).

    python benchmarks/compare_runs.py A.json B.json [--out benchmarks/results/NAME.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bincam.bench.stats import bands_overlap


def ratios(record: dict) -> dict[str, dict]:
    out = {}
    for b, t in record["timing"].items():
        for row in t["rows"]:
            out.update({f"{row['engine']} batch {b}: {n}": r for n, r in row["ratios"].items()})
        out.update({f"batch {b}: {n}": r for n, r in t["cross"].items()})
    for baseline in record.get("baselines", {}).values():
        out.update(baseline["vs"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    ra, rb = (ratios(json.loads(p.read_text())) for p in (args.a, args.b))
    lines = [f"# Two runs of the same bench command: {args.a.name} vs {args.b.name}", "",
             "| ratio | run A median [range over rounds] | run B median [range over rounds] | agree |", "|---|---|---|---|"]
    agree = 0
    common = [n for n in ra if n in rb]
    for n in common:
        ok = bands_overlap(ra[n], rb[n])
        agree += ok
        band = "{median:.2f} [{low:.2f}–{high:.2f}]"
        lines.append(f"| {n} | {band.format(**ra[n])} | {band.format(**rb[n])} | "
                     f"{'yes' if ok else 'no'} |")
    lines += ["", f"{agree} of {len(common)} ratios agree within the reported bands."]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0 if agree == len(common) else 1


if __name__ == "__main__":
    sys.exit(main())
